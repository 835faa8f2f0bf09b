//! The layers of `conductor/src` hold: each folder imports only the ones below it
//! (`http → engine → store → domain`, with `config` beside them), and `domain` uses no I/O crate.
//! Read from the sources, so a `use` that crosses a layer fails here, not in review.

use std::path::{Path, PathBuf};

/// What code under each folder may not name: other layers above it, and for `domain` the I/O crates.
const RULES: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "crate::store",
            "crate::engine",
            "crate::http",
            "crate::config",
            "crate::cli",
            "crate::startup",
            "axum::",
            "sqlx::",
            "tokio::",
            "reqwest::",
            "use axum",
            "use sqlx",
            "use tokio",
            "use reqwest",
        ],
    ),
    (
        "store",
        &[
            "crate::engine",
            "crate::http",
            "crate::config",
            "crate::cli",
            "crate::startup",
        ],
    ),
    (
        "config",
        &[
            "crate::engine",
            "crate::http",
            "crate::cli",
            "crate::startup",
        ],
    ),
    ("engine", &["crate::http", "crate::cli", "crate::startup"]),
    ("http", &["crate::cli", "crate::startup"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut crossings = Vec::new();
    for (layer, forbidden) in RULES {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no sources under src/{layer}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for f in forbidden.iter().filter(|f| code.contains(*f)) {
                    crossings.push(format!("{}:{}: {f}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        crossings.is_empty(),
        "imports against the layers:\n{}",
        crossings.join("\n")
    );
}
