//! The example trees the demo writes out (`examples/base-1.0`: a server's install root at
//! 1.0; `examples/sample-rollup`: the 1.1 update), embedded by `build.rs` so the demo needs
//! no checkout of the sources.

use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/demo_assets.rs"));

/// One embedded file, directory or link of an example tree.
#[derive(Debug)]
pub enum Asset {
    /// A directory.
    Dir(&'static str),
    /// A file: path, mode, content.
    File(&'static str, u32, &'static [u8]),
    /// A symbolic link: path, target.
    Link(&'static str, &'static str),
}

/// Writes an embedded tree under `dest`.
pub fn write_tree(assets: &[Asset], dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dest)?;
    for a in assets {
        match a {
            Asset::Dir(p) => std::fs::create_dir_all(dest.join(p))?,
            Asset::File(p, mode, bytes) => {
                std::fs::write(dest.join(p), bytes)?;
                std::fs::set_permissions(dest.join(p), std::fs::Permissions::from_mode(*mode))?;
            }
            Asset::Link(p, target) => std::os::unix::fs::symlink(target, dest.join(p))?,
        }
    }
    Ok(())
}
