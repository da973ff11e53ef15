//! Static files (the dashboard) served from one folder: `GET /` is its `index.html`. Only plain names
//! of regular files directly inside the folder are served: no `..`, no hidden files, no subfolders,
//! and no symlinks (a link in the folder could point anywhere, `/etc/passwd` included).

use std::path::{Path, PathBuf};

/// The file under `dir` that answers `path`, if there is one.
pub fn resolve(dir: &Path, path: &str) -> Option<PathBuf> {
    let name = path.strip_prefix('/')?;
    let name = if name.is_empty() { "index.html" } else { name };
    // No '/' is allowed, so the name cannot reach into a subfolder.
    let plain = !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain {
        return None;
    }
    let file = dir.join(name);
    // Not `is_file()`: it follows symlinks. The entry itself must be a regular file.
    if !std::fs::symlink_metadata(&file).ok()?.file_type().is_file() {
        return None;
    }
    // And its real folder must be the folder's real path (which may itself be reached by a link).
    let real = file.canonicalize().ok()?;
    (real.parent()? == dir.canonicalize().ok()?).then_some(file)
}

/// The content type of a static file, by extension.
pub fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_plain_names_inside_the_folder_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
        assert_eq!(resolve(&dir, "/"), Some(dir.join("index.html")));
        assert_eq!(resolve(&dir, "/app.js"), Some(dir.join("app.js")));
        for bad in [
            "/../Cargo.toml",
            "/.hidden",
            "/a//b",
            "/%2e%2e/x",
            "app.js",
            "/nope.js",
        ] {
            assert_eq!(resolve(&dir, bad), None, "{bad}");
        }
    }

    /// A scratch folder, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn never_follows_symlinks_or_enters_subfolders() {
        let root =
            Scratch(std::env::temp_dir().join(format!("sluice-files-{}", std::process::id())));
        let (site, outside) = (root.0.join("site"), root.0.join("outside"));
        for folder in [&site, &outside, &site.join("sub")] {
            std::fs::create_dir_all(folder).expect("create folder");
        }
        std::fs::write(site.join("index.html"), "<p>hi</p>").expect("write");
        std::fs::write(site.join("app.js"), "1").expect("write");
        std::fs::write(site.join("sub").join("x.js"), "2").expect("write");
        std::fs::write(outside.join("secret.txt"), "secret").expect("write");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, site.join(name)).expect("symlink")
        };
        link(&outside.join("secret.txt"), "passwd");
        link(Path::new("/etc/passwd"), "etc-passwd");
        link(&site.join("app.js"), "alias.js");
        link(&outside, "out");

        assert_eq!(resolve(&site, "/"), Some(site.join("index.html")));
        assert_eq!(resolve(&site, "/app.js"), Some(site.join("app.js")));
        for refused in [
            "/passwd",
            "/etc-passwd",
            "/alias.js",
            "/out",
            "/out/secret.txt",
            "/sub",
            "/sub/x.js",
        ] {
            assert_eq!(resolve(&site, refused), None, "{refused}");
        }

        // The folder itself may be a link (e.g. a deploy's "current" release): its files still serve.
        let current = root.0.join("current");
        std::os::unix::fs::symlink(&site, &current).expect("symlink");
        assert_eq!(resolve(&current, "/app.js"), Some(current.join("app.js")));
        assert_eq!(resolve(&current, "/passwd"), None);
    }
}
