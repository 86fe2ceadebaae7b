//! What an uploaded chart is: a gzip'd tar with `<dir>/Chart.yaml` naming it.

use serde_json::{Map, Value};
use std::io::Read;

/// Largest Chart.yaml read (they are a few hundred bytes).
const MAX_CHART_YAML: u64 = 1 << 20;
/// Unpacked bytes a chart may claim: bounds the work a small gzip bomb can cause.
const MAX_UNPACKED: u64 = 512 << 20;
const MAX_ENTRIES: usize = 100_000;

/// A chart's validated name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartName(String);

impl ChartName {
    /// Helm's rule: lowercase letters, digits, dashes (we allow `_` and `.` as older charts do).
    pub fn parse(s: &str) -> Result<ChartName, String> {
        let ok = !s.is_empty()
            && s.len() <= 250
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(ChartName(s.to_owned()))
        } else {
            Err(format!("invalid chart name {s:?}"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chart's version: SemVer 2, as Helm requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartVersion(String);

impl ChartVersion {
    pub fn parse(s: &str) -> Result<ChartVersion, String> {
        let v = s.strip_prefix('v').unwrap_or(s);
        semver::Version::parse(v).map_err(|e| format!("invalid chart version {s:?}: {e}"))?;
        Ok(ChartVersion(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(self.0.strip_prefix('v').unwrap_or(&self.0)).ok()
    }
}

/// Chart.yaml of an uploaded chart.
#[derive(Debug, Clone)]
pub struct ChartMeta {
    pub name: ChartName,
    pub version: ChartVersion,
    /// every field of Chart.yaml, for the index entry
    pub fields: Map<String, Value>,
}

impl ChartMeta {
    pub fn file_name(&self) -> String {
        format!("{}-{}.tgz", self.name.as_str(), self.version.as_str())
    }
}

/// Reads a chart archive through: gzip, tar, no path tricks, one `<dir>/Chart.yaml` with a
/// name and a version. The message says what is wrong for the uploader.
pub fn inspect(archive: impl Read) -> Result<ChartMeta, String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar
        .entries()
        .map_err(|e| format!("not a gzip'd tar archive: {e}"))?;
    let mut found = None;
    let mut unpacked = 0u64;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| format!("not a chart archive (gzip'd tar): {e}"))?;
        if n >= MAX_ENTRIES {
            return Err("chart archive has too many files".into());
        }
        unpacked = unpacked.saturating_add(entry.size());
        if unpacked > MAX_UNPACKED {
            return Err("chart archive unpacks too large".into());
        }
        let path = entry.path_bytes().into_owned();
        let path =
            String::from_utf8(path).map_err(|_| "chart archive has a non-UTF-8 path".to_owned())?;
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if path.starts_with('/') || path.contains('\\') || parts.iter().any(|p| *p == "..") {
            return Err(format!("chart archive has an unsafe path {path:?}"));
        }
        if found.is_none() && parts.len() == 2 && parts[1] == "Chart.yaml" {
            let mut text = String::new();
            entry
                .by_ref()
                .take(MAX_CHART_YAML)
                .read_to_string(&mut text)
                .map_err(|e| format!("Chart.yaml is unreadable: {e}"))?;
            found = Some(parse_chart_yaml(&text)?);
        }
    }
    found.ok_or_else(|| "chart archive has no <chart>/Chart.yaml".to_owned())
}

pub fn parse_chart_yaml(text: &str) -> Result<ChartMeta, String> {
    let value: Value =
        serde_norway::from_str(text).map_err(|e| format!("Chart.yaml is not valid YAML: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("Chart.yaml is not a mapping".into());
    };
    let scalar = |k: &str| match fields.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let name = scalar("name").ok_or("Chart.yaml has no name")?;
    let version = scalar("version").ok_or("Chart.yaml has no version")?;
    Ok(ChartMeta {
        name: ChartName::parse(&name)?,
        version: ChartVersion::parse(&version)?,
        fields,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A .tgz with these (path, content) files.
    pub fn tgz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            for (path, content) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(content.len() as u64);
                h.set_mode(0o644);
                // set_path refuses `..`: write the name field directly like a hostile tool would
                let name = path.as_bytes();
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, content.as_bytes()).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        out
    }

    pub fn chart(name: &str, version: &str) -> Vec<u8> {
        let yaml =
            format!("apiVersion: v2\nname: {name}\nversion: {version}\ndescription: test chart\n");
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  v: {{ .Values.v | quote }}\n";
        tgz(&[
            (&format!("{name}/Chart.yaml"), &yaml),
            (&format!("{name}/values.yaml"), "v: hello\n"),
            (&format!("{name}/templates/cm.yaml"), cm),
        ])
    }

    #[test]
    fn reads_a_chart() {
        let m = inspect(&chart("demo", "1.2.3")[..]).unwrap();
        assert_eq!(m.name.as_str(), "demo");
        assert_eq!(m.file_name(), "demo-1.2.3.tgz");
        assert_eq!(m.fields["description"], "test chart");
    }

    #[test]
    fn refuses_bad_archives() {
        assert!(
            inspect(&b"not gzip at all"[..])
                .unwrap_err()
                .contains("gzip")
        );
        let none = tgz(&[("demo/values.yaml", "a: 1\n")]);
        assert!(inspect(&none[..]).unwrap_err().contains("Chart.yaml"));
        let evil = tgz(&[
            ("demo/Chart.yaml", "name: demo\nversion: 1.0.0\n"),
            ("../x", "x"),
        ]);
        assert!(inspect(&evil[..]).unwrap_err().contains("unsafe path"));
        let nover = tgz(&[("demo/Chart.yaml", "name: demo\n")]);
        assert!(inspect(&nover[..]).unwrap_err().contains("version"));
        let badname = tgz(&[("demo/Chart.yaml", "name: ../x\nversion: 1.0.0\n")]);
        assert!(inspect(&badname[..]).unwrap_err().contains("name"));
        let badver = tgz(&[("demo/Chart.yaml", "name: demo\nversion: latest\n")]);
        assert!(inspect(&badver[..]).unwrap_err().contains("version"));
    }
}
