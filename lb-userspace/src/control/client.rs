//! The `lbctl` end of the control socket: blocking, one request at a time (a CLI needs nothing more, and staying
//! off tokio keeps `lbctl` starting fast).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{Request, Response};

/// Long enough for a reload of a large config; short enough that a wedged daemon does not hang scripts forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("lbd is not running (no socket at {})", .0.display())]
    NotRunning(PathBuf),
    #[error("permission denied on {} (the control socket is root-only)", .0.display())]
    PermissionDenied(PathBuf),
    #[error("control socket {path}: {err}", path = .0.display(), err = .1)]
    Io(PathBuf, io::Error),
    #[error("lbd sent an unreadable response: {0}")]
    Protocol(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_path_buf())
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_path_buf()),
            _ => ClientError::Io(path.to_path_buf(), e),
        })?;
        let io_err = |e| ClientError::Io(path.to_path_buf(), e);
        stream
            .set_read_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns the whole answer; the pieces of a streamed one are joined.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut flows = Vec::new();
        let last = self.call_streamed(request, |part| {
            if let Response::FlowsPart(f) = part {
                flows.extend(f);
            }
        })?;
        Ok(match last {
            Response::Flows(rest) => {
                flows.extend(rest);
                Response::Flows(flows)
            }
            other => other,
        })
    }

    /// Sends `request`, hands each piece of a streamed answer to `part` as it arrives, and returns the final
    /// response.
    pub fn call_streamed(
        &mut self,
        request: &Request,
        mut part: impl FnMut(Response),
    ) -> Result<Response, ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line) {
            // A server that refuses the connection (too many open) says why and closes it, possibly before the
            // request is written: its reason is the answer, not the broken pipe.
            return match self.read_response() {
                Ok(refusal @ Response::Error { .. }) => Ok(refusal),
                _ => Err(ClientError::Io(self.path.clone(), e)),
            };
        }
        loop {
            let response = self.read_response()?;
            if !response.is_part() {
                return Ok(response);
            }
            part(response);
        }
    }

    fn read_response(&mut self) -> Result<Response, ClientError> {
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        if n == 0 || !answer.ends_with('\n') {
            return Err(ClientError::Protocol(
                "connection closed before the whole response (did lbd exit?)".into(),
            ));
        }
        serde_json::from_str(answer.trim_end())
            .map_err(|e| ClientError::Protocol(format!("{e}: {answer}")))
    }
}
