//! The agent's identity: its id and secret token, kept in the state dir (mode 0600).

use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// What enrollment gave this agent. Never printed: `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The coordinator it enrolled with.
    pub server: String,
    /// Its id there.
    pub agent_id: String,
    /// Its bearer token.
    pub agent_token: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("server", &self.server)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.json")
}

/// The saved identity, if this agent enrolled before.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<Identity>> {
    match std::fs::read(path(state_dir)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); remove it and enroll again with --enroll-token",
                path(state_dir).display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path(state_dir).display())),
    }
}

/// Saves the identity durably (temp file, fsync, rename), readable by root only.
pub fn save(state_dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    let tmp = state_dir.join("identity.json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(identity)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}
