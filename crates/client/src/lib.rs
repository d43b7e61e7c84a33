//! berth's client toolkit: image references as users type them and clients for the
//! registries they name ([`remote`]), byte-exact copies between registries and OCI
//! layout directories ([`copy`]), whole registries mirrored into others ([`mirror`]),
//! break-glass tarballs ([`archive`]), pull walks ([`verify`]), the client commands as
//! the CLI runs them ([`commands`]) and the progress bars of berth's commands
//! ([`progress`]). It reaches registries only through their HTTP API
//! (`distribution::Client`) and writes only the files it is asked to; it never opens a
//! berth store and never serves HTTP.

pub mod archive;
pub mod commands;
pub mod copy;
pub mod mirror;
pub mod probe;
pub mod progress;
pub mod remote;
pub mod verify;

/// Write `bytes` to `path` through a temporary file beside it and a rename, so a reader
/// sees the old file or the new one, never a part. The file is synced before the rename
/// and the directory after it, as the store does, so a crash (or power loss) leaves the
/// old file or the whole new one under `path`, never an empty or partial one.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `1.5 MiB`: a byte count as people read it (binary units, one decimal).
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_counts_read_like_the_server_page() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn write_atomic_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/dir/index.json");
        super::write_atomic(&path, b"first").unwrap();
        super::write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["index.json"]);
    }
}
