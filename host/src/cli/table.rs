//! Human output: aligned columns under a header, and `key: value` lines for one object.

use serde_json::Value;

/// Columns padded to their widest cell; the last column is not padded.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < widths.len() {
                text.extend(std::iter::repeat_n(' ', widths[i].saturating_sub(cell.chars().count())));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A JSON value as a table cell: strings bare, lists comma-separated, absent as "-".
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.into(),
        Some(Value::Array(a)) if a.is_empty() => "-".into(),
        Some(Value::Array(a)) => a.iter().map(|x| cell(Some(x))).collect::<Vec<_>>().join(","),
        Some(Value::Object(o)) if o.contains_key("who") => {
            // an access grant
            format!("{}={}", cell(o.get("who")), cell(o.get("allow")))
        }
        Some(other) => other.to_string(),
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub fn time(v: Option<&Value>) -> String {
    match v.and_then(Value::as_u64) {
        Some(secs) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string(),
        None => "-".into(),
    }
}

/// One object as `key: value` lines, keys aligned, in the server's order.
pub fn object(v: &Value) -> String {
    let Some(obj) = v.as_object() else { return format!("{v}\n") };
    let width = obj.keys().map(|k| k.chars().count()).max().unwrap_or(0);
    obj.iter().map(|(k, val)| format!("{k:width$}  {}\n", cell(Some(val)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let out = render(&["NAME", "TYPE"], &[vec!["a-long-name".into(), "local".into()], vec!["b".into(), "remote".into()]]);
        assert_eq!(out, "NAME         TYPE\na-long-name  local\nb            remote\n");
        assert_eq!(cell(Some(&serde_json::json!(["x", "y"]))), "x,y");
        assert_eq!(cell(None), "-");
        assert_eq!(time(Some(&serde_json::json!(0))), "1970-01-01T00:00:00Z");
    }
}
