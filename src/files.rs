//! Static files (the dashboard) served from one folder: `GET /` is its `index.html`. Only plain names
//! are served: no `..`, no hidden files, nothing outside the folder.

use std::path::{Path, PathBuf};

/// The file under `dir` that answers `path`, if there is one.
pub fn resolve(dir: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.strip_prefix('/')?;
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    let safe = relative.split('/').all(|segment| {
        !segment.is_empty()
            && !segment.starts_with('.')
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    if !safe {
        return None;
    }
    let file = dir.join(relative);
    file.is_file().then_some(file)
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
}
