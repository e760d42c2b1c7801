//! The workspace lint is `unsafe_code = "deny"` (not `forbid`) so that `sim/src/hint.rs` can
//! allow it for its prefetch hint. This test keeps that exception the only one: any other
//! `allow(unsafe_code)` or `unsafe` block in the workspace's sources fails here.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn unsafe_code_is_allowed_only_for_the_prefetch_hint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(files.len() > 50, "found only {} Rust files under {}", files.len(), root.display());
    let allowed = root.join("sim/src/hint.rs");
    let this_test = root.join("sim/tests/unsafe_code.rs");
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| **f != allowed && **f != this_test) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("allow(unsafe_code)") || code.contains("unsafe {") || code.contains("unsafe fn") {
                offenders.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "unsafe code outside sim/src/hint.rs:\n{}", offenders.join("\n"));
    let hint = std::fs::read_to_string(&allowed).expect("sim/src/hint.rs");
    assert_eq!(hint.matches("#[allow(unsafe_code)]").count(), 1, "hint.rs allows unsafe in one function");
}
