//! A unix-socket proxy of ours in front of a daemon's API socket that records the request line
//! of every HTTP/1.1 request going through it (`GET /v1.47/containers/<id>/json`), so a test
//! can say exactly which requests the code under test made to the real daemon.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use wm_core::sync::MutexExt;

use crate::runtimes::Unavailable;

/// A running proxy. Dropping it stops it and removes its socket.
#[derive(Debug)]
pub struct RecordingProxy {
    socket: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    /// Listens on `socket` and forwards every connection to `upstream`. Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// The socket cannot be bound.
    pub fn start(socket: &Path, upstream: &Path) -> Result<Self, Unavailable> {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).map_err(|e| Unavailable(format!("proxy: bind {}: {e}", socket.display())))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (recorded, upstream) = (lines.clone(), upstream.to_path_buf());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(daemon) = UnixStream::connect(&upstream).await else { continue };
                tokio::spawn(pipe(client, daemon, recorded.clone()));
            }
        });
        Ok(Self { socket: socket.to_path_buf(), lines, task })
    }

    /// The socket to point a client at.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every request line seen so far (method and target, without the HTTP version), in order.
    pub fn requests(&self) -> Vec<String> {
        self.lines.locked().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Copies both ways; reads request heads out of the client's bytes as they pass (keep-alive:
/// one head per request, a `Content-Length` body skipped).
async fn pipe(client: UnixStream, daemon: UnixStream, lines: Arc<Mutex<Vec<String>>>) {
    let ((mut client_read, mut client_write), (mut daemon_read, mut daemon_write)) =
        (client.into_split(), daemon.into_split());
    let down = tokio::io::copy(&mut daemon_read, &mut client_write);
    let up = async {
        let (mut buffer, mut pending, mut skip) = (vec![0u8; 16 << 10], Vec::new(), 0usize);
        loop {
            let n = client_read.read(&mut buffer).await?;
            if n == 0 {
                return daemon_write.shutdown().await;
            }
            daemon_write.write_all(&buffer[..n]).await?;
            pending.extend_from_slice(&buffer[..n]);
            loop {
                let skipped = skip.min(pending.len());
                pending.drain(..skipped);
                skip -= skipped;
                let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else { break };
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                let line = head.lines().next().unwrap_or_default();
                let line = line.rsplit_once(' ').map_or(line, |(request, _version)| request);
                lines.locked().push(line.to_owned());
                skip = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                pending.drain(..end + 4);
            }
        }
    };
    let _ = tokio::join!(up, down);
}
