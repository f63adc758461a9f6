//! The control API: typed requests over a root-only unix socket ([`api`]), the daemon side ([`server`], which calls
//! a [`Handler`] the daemon implements) and the `lbctl` side ([`client`]).

pub mod api;
pub mod client;
pub mod server;

pub use api::{Request, Response};
pub use client::{Client, ClientError};
pub use server::{Handler, Server};
