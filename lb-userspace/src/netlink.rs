//! A minimal rtnetlink client: one request, its answer, over a `NETLINK_ROUTE` socket. lbd writes a handful of
//! routes, rules and one link with it (announcement routes, the probe path), never in a packet's path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NLMSG_HDR_LEN: usize = 16;
/// A netlink answer never takes longer than this unless the kernel is wedged; lbd must not hang with it.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// Appends an attribute (`struct rtattr` / `struct nlattr`, padded to 4 bytes).
pub fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The `(type, payload)` of each attribute in `buf`; stops at the first malformed one.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(buf.get(..2)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?);
        let data = buf.get(4..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, data))
    })
}

/// A `NETLINK_ROUTE` socket for one exchange.
pub struct Netlink(OwnedFd);

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let sock = Netlink(unsafe { OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Sends one request and reads the answer: every data message goes to `each` (a dump's routes), until the
    /// dump's end or the acknowledgement; a negative acknowledgement is the error it carries.
    pub fn request(
        &self,
        ty: u16,
        flags: u16,
        body: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        const SEQ: u32 = 1;
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&SEQ.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        msg.extend_from_slice(body);
        // SAFETY: `msg` is a valid buffer of the length passed; to the kernel (a null address is the kernel).
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &rest[NLMSG_HDR_LEN..len];
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
                if seq != SEQ {
                    continue;
                }
                match ty as i32 {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(-libc::EPROTO);
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(payload),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let mut buf = Vec::new();
        attr(&mut buf, libc::RTA_DST, &[198, 19, 0, 10]);
        attr(&mut buf, 99, &[1, 2, 3]);
        attr(&mut buf, libc::RTA_TABLE, &100u32.to_ne_bytes());
        assert_eq!(buf.len(), 8 + 8 + 8);
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(
            got,
            [
                (libc::RTA_DST, vec![198, 19, 0, 10]),
                (99, vec![1, 2, 3]),
                (libc::RTA_TABLE, 100u32.to_ne_bytes().to_vec())
            ]
        );
    }
}
