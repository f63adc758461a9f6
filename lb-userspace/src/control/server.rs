//! The daemon end of the control socket. The socket is root-only: its directory is created 0700 and the socket
//! itself set to 0600 before the first accept, so no other user can ever talk to it (a mutation here rewrites the
//! dataplane). One request per line, one response per line; a connection may send several requests.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::api::{Request, Response};

/// Longest request line accepted; a config text for `ConfigCheck` is the largest legitimate request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// What the daemon implements: answer one request. Called concurrently from several connections.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` (creating its directory 0700). A stale socket left by a killed daemon is replaced; a socket
    /// some live daemon still answers on is an error (two daemons must not fight over one dataplane).
    pub fn bind(path: &Path) -> io::Result<Server> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: exists and is not a socket; lbd deletes only a socket it left behind",
                        path.display()
                    ),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another lbd is listening", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // Bind with a restrictive umask would be racy in a threaded process; the window between bind and chmod is
        // closed by the 0700 directory (when we created it) and by not accepting before the chmod.
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes. Each connection gets its own task.
    pub async fn serve<H: Handler>(self, handler: Arc<H>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(stream, handler).await {
                                tracing::debug!("control connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("control socket accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        remove_socket(&self.path);
    }
}

/// Removes the control socket at `path`, and nothing else: a file put there since is left alone.
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

async fn serve_connection<H: Handler>(stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if n > MAX_REQUEST_BYTES {
            Response::error(format!("request longer than {MAX_REQUEST_BYTES} bytes"))
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(request) => handler.handle(request).await,
                Err(e) => Response::error(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if n > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}
