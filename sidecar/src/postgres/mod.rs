//! The PostgreSQL wire proxy.

pub mod auth;
pub mod cancel;
pub mod codec;
pub mod results;
pub mod session;
pub mod startup;
pub mod tls;
pub mod upstream;
