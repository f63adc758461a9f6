//! The control API: typed requests over a root-only unix socket ([`api`]), the daemon side ([`server`], which calls
//! a [`Handler`]; lbd's is in [`handler`]) and the `lbctl` side ([`client`]).

pub mod api;
pub mod client;
mod handler;
pub mod server;

pub use api::{Request, Response};
pub use client::{Client, ClientError};
pub use server::{Handler, Peer, Reply, Server};
