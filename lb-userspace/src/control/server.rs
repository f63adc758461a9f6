//! The daemon end of the control socket. The socket is root-only: its directory is created 0700 and the socket
//! itself set to 0600 before the first accept, so no other user can ever talk to it (a mutation here rewrites the
//! dataplane). One request per line, one response per line (or, for a streamed answer, parts and then the final
//! response, see [`Reply`]); a connection may send several requests.
//!
//! Bounded like every endpoint of lbd: at most [`MAX_CONNECTIONS`] at once (one more is told so and closed, so a
//! leaking script cannot exhaust lbd's descriptors), a connection that sends no complete request within
//! [`IDLE_TIMEOUT`] is closed, and so is one that does not take a response within [`WRITE_TIMEOUT`].

use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};

use super::api::{Request, Response};

/// Longest request line accepted; a config text for `ConfigCheck` is the largest legitimate request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Control connections served at once. lbctl uses one per command; more than this at once is a leak.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may wait before (or while) sending a request line. lbctl sends its request at once.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response line (or one part of a streamed answer) may wait for the client to take it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a control connection (SO_PEERCRED, read at accept): every change is logged with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// The process that connected (the kernel may not know it, e.g. across PID namespaces).
    pub pid: Option<i32>,
}

impl Peer {
    /// The pid for a log line: the number, or `?` when the kernel did not say.
    pub fn pid_text(&self) -> String {
        self.pid.map_or_else(|| "?".into(), |p| p.to_string())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} pid={}", self.uid, self.pid_text())
    }
}

/// The answer to one request: one response, or a stream of parts ending with the final response (a long answer
/// such as `lbctl flows` is read and sent piece by piece, so neither lbd's lock nor its memory hold all of it).
/// A stream that ends without a final response closes the connection (the client sees the answer cut short).
pub enum Reply {
    /// Boxed: a status answer (with its announcements) is a few hundred bytes, the stream a pointer.
    One(Box<Response>),
    Stream(mpsc::Receiver<Response>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::One(Box::new(r))
    }
}

/// What the daemon implements: answer one request from `peer`. Called concurrently from several connections.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, request: Request) -> impl Future<Output = Reply> + Send;
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
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            refuse(&stream);
                            continue;
                        };
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(stream, handler).await {
                                tracing::debug!("control connection: {e}");
                            }
                            drop(slot);
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

/// One connection over the cap: told why, without waiting for it (a fresh socket's buffer takes one line), and
/// closed.
fn refuse(stream: &UnixStream) {
    tracing::warn!("control socket: {MAX_CONNECTIONS} connections open already; one more refused");
    let mut line = serde_json::to_vec(&Response::error(format!(
        "lbd serves at most {MAX_CONNECTIONS} control connections at once; try again"
    )))
    .expect("a response serializes");
    line.push(b'\n');
    let _ = stream.try_write(&line);
}

fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    Ok(Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    })
}

async fn serve_connection<H: Handler>(stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
    let peer = peer(&stream)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let mut request = (&mut lines).take(MAX_REQUEST_BYTES as u64 + 1);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, request.read_line(&mut line)).await {
            Ok(n) => n?,
            Err(_) => {
                tracing::debug!(%peer, "control connection idle for {IDLE_TIMEOUT:?}; closed");
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        let reply = if n > MAX_REQUEST_BYTES {
            Response::error(format!("request longer than {MAX_REQUEST_BYTES} bytes")).into()
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(request) => handler.handle(peer, request).await,
                Err(e) => Response::error(format!("bad request: {e}")).into(),
            }
        };
        match reply {
            Reply::One(response) => send(&mut write, &response).await?,
            Reply::Stream(mut parts) => loop {
                let Some(response) = parts.recv().await else {
                    return Ok(());
                };
                send(&mut write, &response).await?;
                if !response.is_part() {
                    break;
                }
            },
        }
        if n > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}

/// Writes one response line, or gives up on a client that does not read it.
async fn send(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no response for {WRITE_TIMEOUT:?}"),
            )
        })?
}
