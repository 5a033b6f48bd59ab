//! The packager's commands: make a signing key, pack and sign a rollup, verify a package.

use anyhow::Context as _;
use fleetup_proto::keys::{self, PublicKey, SecretKey};
use fleetup_proto::package::{self, Limits};
use std::path::{Path, PathBuf};

/// Reads every `--trust` key file, naming the one that fails.
pub fn read_trusted(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    if paths.is_empty() {
        anyhow::bail!(
            "no trusted key given: pass --trust KEY.pub (the public half of the key the package was signed with)"
        );
    }
    paths.iter().map(|p| PublicKey::read(p).map_err(anyhow::Error::from)).collect()
}

/// `fleetup-agent keygen --out KEY`
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let public = keys::write_keypair(out).with_context(|| format!("cannot create the key pair {}", out.display()))?;
    println!("wrote {} (secret, mode 0600) and {}.pub (key id {})", out.display(), out.display(), public.key_id());
    Ok(())
}

/// `fleetup-agent pack DIR --key KEY --out FILE`
pub fn pack(dir: &Path, key: &Path, out: &Path) -> anyhow::Result<()> {
    let key = SecretKey::read(key)?;
    let summary = package::pack_dir(dir, &key, out).with_context(|| format!("cannot pack {}", dir.display()))?;
    println!(
        "packed {} {} into {}: {} entries, {} bytes, signed by key {}",
        summary.name,
        summary.version,
        out.display(),
        summary.entries,
        summary.total_size,
        summary.key_id
    );
    Ok(())
}

/// `fleetup-agent verify FILE --trust KEY.pub`
pub fn verify(file: &Path, trust: &[PathBuf]) -> anyhow::Result<()> {
    let trusted = read_trusted(trust)?;
    let verified = package::verify_file(file, &trusted, &Limits::default())
        .with_context(|| format!("{} failed verification", file.display()))?;
    println!(
        "{}: OK — {} {}, {} entries, signed by key {}",
        file.display(),
        verified.manifest.rollup.name,
        verified.manifest.rollup.version,
        verified.index.entries.len(),
        verified.key_id
    );
    Ok(())
}
