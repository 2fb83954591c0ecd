//! Tells when a file the agent reads (a token, a CA) has been replaced or rewritten.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// Identifies one version of a file without reading it: device, inode, size and modification
/// time, through any symlink.
///
/// A projected service-account token is swapped in by renaming a new directory over a symlink
/// (new inode); a CA bundle rewritten in place changes size or mtime. Comparing stamps costs one
/// `stat`, so a client can check before each use and rebuild itself only when the file changed.
/// The caller makes the `stat` (wm-core does no I/O):
///
/// ```no_run
/// # use wm_core::FileStamp;
/// let stamp = std::fs::metadata("/var/run/secrets/token").ok().map(|m| FileStamp::of(&m));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// Returns the stamp of the file `m` describes.
    ///
    /// Pass metadata that follows symlinks (`std::fs::metadata`, not `symlink_metadata`), so that
    /// the stamp is the target's.
    pub fn of(m: &Metadata) -> Self {
        Self { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &std::path::Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }

    #[test]
    fn a_stamp_changes_when_the_file_is_replaced_or_grows() {
        let dir = std::env::temp_dir().join(format!("wm-core-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "one").unwrap();
        let first = stamp(&path).unwrap();
        assert_eq!(stamp(&path), Some(first));
        std::fs::write(dir.join("new"), "two").unwrap();
        std::fs::rename(dir.join("new"), &path).unwrap();
        let replaced = stamp(&path).unwrap();
        assert_ne!(replaced, first);
        std::fs::write(&path, "three!").unwrap();
        assert_ne!(stamp(&path).unwrap(), replaced);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(stamp(&path), None);
    }
}
