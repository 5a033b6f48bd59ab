//! Embeds the demo's example trees (`examples/base-1.0`, `examples/sample-rollup`) in the
//! binary, so that `fleetup demo` runs from anywhere, not only from a checkout.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let mut code = String::new();
    for (name, dir) in [("BASE_1_0", "../examples/base-1.0"), ("SAMPLE_ROLLUP", "../examples/sample-rollup")] {
        println!("cargo:rerun-if-changed={dir}");
        let root = Path::new(dir).canonicalize().expect("example dir");
        let mut entries = Vec::new();
        walk(&root, &root, &mut entries);
        writeln!(code, "/// The files of `{dir}`.\npub static {name}: &[Asset] = &[").unwrap();
        for e in entries {
            writeln!(code, "    {e},").unwrap();
        }
        writeln!(code, "];").unwrap();
    }
    std::fs::write(Path::new(&out).join("demo_assets.rs"), code).expect("writing demo_assets.rs");
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut names: Vec<_> = std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
    names.sort();
    for path in names {
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path.strip_prefix(root).expect("inside").display().to_string();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("link").display().to_string();
            out.push(format!("Asset::Link({rel:?}, {target:?})"));
        } else if meta.is_dir() {
            out.push(format!("Asset::Dir({rel:?})"));
            walk(root, &path, out);
        } else {
            out.push(format!("Asset::File({rel:?}, {mode:#o}, include_bytes!({:?}))", path.display().to_string()));
        }
    }
}
