//! Downloading a job's package: resumable, bounded by the announced size, a deadline on
//! every read, a minimum throughput over a window, and the sha256 checked before the file
//! is used.
//!
//! A link that trickles (1 byte every 10 s never trips a per-read deadline) is caught by
//! the throughput floor: fewer than `min_bytes_per_sec × window` bytes in any window ends
//! the attempt as transient; the partial file is kept and the next attempt resumes it with
//! HTTP Range.

use super::client::{CallError, Client};
use fleetup_proto::agent_api::PackageRef;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

/// How long one read may take before the download is abandoned (and resumed later).
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// The slowest a download may be: fewer than `min_bytes_per_sec × window` bytes in any
/// `window` ends the attempt (resumed later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// Bytes per second, averaged over `window`.
    pub min_bytes_per_sec: u64,
    /// The window.
    pub window: Duration,
}

impl Default for Floor {
    fn default() -> Self {
        Self { min_bytes_per_sec: 1024, window: Duration::from_secs(30) }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Worth trying again (network, deadline); the partial file is kept for resuming.
    #[error("download interrupted: {0}")]
    Transient(String),
    /// The bytes are not the announced package; the partial file was removed.
    #[error("downloaded package is not the one announced: {0}")]
    Corrupt(String),
    /// The coordinator refused the download.
    #[error("download refused: {0}")]
    Refused(String),
}

/// Downloads `pkg` into `dir/<sha256>.fup` (reusing a complete copy) and returns its path.
pub async fn fetch(client: &Client, pkg: &PackageRef, dir: &Path, floor: Floor) -> Result<PathBuf, DownloadError> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| DownloadError::Transient(format!("{}: {e}", dir.display())))?;
    let done = dir.join(format!("{}.fup", pkg.sha256));
    if tokio::fs::metadata(&done).await.is_ok() {
        if sha256_of(&done).await.is_ok_and(|h| h == pkg.sha256) {
            return Ok(done);
        }
        let _ = tokio::fs::remove_file(&done).await;
    }
    let part = dir.join(format!("{}.part", pkg.sha256));
    let mut have = tokio::fs::metadata(&part).await.map_or(0, |m| m.len());
    if have > pkg.size {
        let _ = tokio::fs::remove_file(&part).await;
        have = 0;
    }
    if have < pkg.size {
        let resp = client.download(&pkg.download_path, have).await.map_err(|e| match e {
            CallError::Transient(m) => DownloadError::Transient(m),
            other => DownloadError::Refused(other.to_string()),
        })?;
        // A server that ignores Range answers 200 with the whole file: start over.
        if have > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            have = 0;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(have > 0)
            .truncate(have == 0)
            .open(&part)
            .await
            .map_err(|e| DownloadError::Transient(format!("{}: {e}", part.display())))?;
        let mut resp = resp;
        let mut window_start = (tokio::time::Instant::now(), have);
        let floor_bytes = floor.min_bytes_per_sec.saturating_mul(floor.window.as_secs().max(1));
        loop {
            let window_end = window_start.0 + floor.window;
            let chunk = tokio::select! {
                r = tokio::time::timeout(READ_DEADLINE, resp.chunk()) => r
                    .map_err(|_| DownloadError::Transient(format!("no data for {}s", READ_DEADLINE.as_secs())))?
                    .map_err(|e| DownloadError::Transient(e.to_string()))?,
                () = tokio::time::sleep_until(window_end) => {
                    let got = have - window_start.1;
                    if got < floor_bytes.min(pkg.size - window_start.1) {
                        file.sync_all().await.map_err(|e| DownloadError::Transient(format!("writing: {e}")))?;
                        return Err(DownloadError::Transient(format!(
                            "too slow: {got} bytes in {} s, under the floor of {} bytes/s (--download-min-rate); {have} of {} bytes kept for a resumed attempt",
                            floor.window.as_secs(), floor.min_bytes_per_sec, pkg.size
                        )));
                    }
                    window_start = (tokio::time::Instant::now(), have);
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            have += chunk.len() as u64;
            if have > pkg.size {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(DownloadError::Corrupt(format!("more than the announced {} bytes", pkg.size)));
            }
            file.write_all(&chunk).await.map_err(|e| DownloadError::Transient(format!("writing: {e}")))?;
        }
        file.sync_all().await.map_err(|e| DownloadError::Transient(format!("writing: {e}")))?;
        if have < pkg.size {
            return Err(DownloadError::Transient(format!("got {have} of {} bytes", pkg.size)));
        }
    }
    let digest = sha256_of(&part).await.map_err(|e| DownloadError::Transient(e.to_string()))?;
    if digest != pkg.sha256 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(DownloadError::Corrupt(format!("sha256 {digest}, announced {}", pkg.sha256)));
    }
    tokio::fs::rename(&part, &done).await.map_err(|e| DownloadError::Transient(e.to_string()))?;
    Ok(done)
}

async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || fleetup_proto::package::file_sha256(&path).map(|(digest, _)| digest))
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)
}
