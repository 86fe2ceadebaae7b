//! Which plugin serves which format, as one immutable set that a reload replaces whole.
//!
//! A request takes the current set once (an `Arc`) and keeps the plugin it resolved for as long
//! as it runs, so a reload never changes a plugin under a request in flight: the old one stays
//! alive until its last request is done. A reload builds the next set off to the side from the
//! files in the plugin directory and swaps it in only once every changed file was loaded and
//! checked; a file that does not load is listed as refused and changes nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::LoadedPlugin;

/// What identifies one version of a file without reading it: a rewrite changes its size or
/// modification time, a file renamed into place has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp { len: meta.len(), modified: meta.modified().ok(), inode }
    }
}

/// A file in the plugin directory that does not serve: why, and since when.
#[derive(Debug, Clone)]
pub struct Refused {
    pub file: PathBuf,
    pub reason: String,
    pub at: SystemTime,
    /// the version of the file that was refused; another version is tried again
    pub stamp: FileStamp,
}

/// The plugins serving now, and the files refused.
#[derive(Default)]
pub struct Registry {
    by_format: HashMap<String, Arc<LoadedPlugin>>,
    /// every plugin's roots, the longest first: the first that a path starts under is its route
    roots: Vec<(String, Arc<LoadedPlugin>)>,
    refused: Vec<Refused>,
}

impl Registry {
    pub fn new(plugins: impl IntoIterator<Item = Arc<LoadedPlugin>>, mut refused: Vec<Refused>) -> Registry {
        refused.sort_by(|a, b| a.file.cmp(&b.file));
        let by_format: HashMap<_, _> = plugins.into_iter().map(|p| (p.meta.format.clone(), p)).collect();
        let mut roots: Vec<_> = by_format.values().flat_map(|p| p.meta.roots.iter().map(|r| (r.clone(), p.clone()))).collect();
        roots.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Registry { by_format, roots, refused }
    }

    pub fn get(&self, format: &str) -> Option<&Arc<LoadedPlugin>> {
        self.by_format.get(format)
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.by_format.values()
    }

    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// The plugin loaded from `file`, if one is.
    pub fn from_file(&self, file: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.by_format.values().find(|p| p.meta.file == file)
    }

    pub fn refusal_of(&self, file: &Path) -> Option<&Refused> {
        self.refused.iter().find(|r| r.file == file)
    }

    /// The plugin whose root the path starts under (the longest root wins), with the length of
    /// that root when the path goes on under it (`/v2/x` under `/v2/`), None when the path is
    /// the root without its slash (`/v2`).
    pub fn by_root(&self, path: &str) -> Option<(Arc<LoadedPlugin>, Option<usize>)> {
        self.roots.iter().find_map(|(root, p)| {
            if path.starts_with(root.as_str()) {
                Some((p.clone(), Some(root.len())))
            } else {
                (path == root.trim_end_matches('/')).then(|| (p.clone(), None))
            }
        })
    }
}

/// The `.wasm` files of the plugin directory with their stamps, by name. Hidden files (a copy
/// in progress named `.x.wasm`) are not plugins.
pub fn scan(dir: &Path) -> std::io::Result<Vec<(PathBuf, FileStamp)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || path.extension().is_none_or(|x| x != "wasm") {
            continue;
        }
        // `metadata` follows a symbolic link: a plugin directory of links to built files works.
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
        {
            files.push((path, FileStamp::of(&meta)));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Files seen changed at the previous poll: one is loaded once it looks the same twice in a row,
/// so a copy still being written is not loaded half way (copying under another name and
/// renaming into place is the safe way; this only spares the impatient).
#[derive(Default)]
pub struct Settling {
    seen: HashMap<PathBuf, FileStamp>,
}

impl Settling {
    /// Whether `file` looked the same at the previous poll; notes it for the next one.
    pub fn settled(&mut self, next: &mut Settling, file: &Path, stamp: FileStamp) -> bool {
        let same = self.seen.get(file) == Some(&stamp);
        if !same {
            next.seen.insert(file.to_owned(), stamp);
        }
        same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_settles_when_it_looks_the_same_twice() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("x.wasm");
        std::fs::write(&file, b"one").unwrap_or_else(|e| panic!("{e}"));
        let stamp = |f: &Path| FileStamp::of(&std::fs::metadata(f).unwrap_or_else(|e| panic!("{e}")));
        let mut first = Settling::default();
        let mut second = Settling::default();
        assert!(!first.settled(&mut second, &file, stamp(&file)), "first sight: not yet");
        std::fs::write(&file, b"one more").unwrap_or_else(|e| panic!("{e}"));
        let mut third = Settling::default();
        assert!(!second.settled(&mut third, &file, stamp(&file)), "it grew: not yet");
        let mut fourth = Settling::default();
        assert!(third.settled(&mut fourth, &file, stamp(&file)), "unchanged across two polls");
    }

    #[test]
    fn scan_skips_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for name in ["b.wasm", "a.wasm", ".copying.wasm", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::create_dir(dir.path().join("d.wasm")).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = scan(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect();
        assert_eq!(names, ["a.wasm", "b.wasm"]);
    }
}
