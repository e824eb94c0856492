//! What the daemon (`builderd`) and the client (`builderctl`) both need, and nothing heavier:
//! the client links this crate alone, never the daemon's library, the engine or an SSH client.
//!
//! Layout:
//! - [`config`]: the TOML config, its platform defaults and its validation.
//! - [`protocol`]: every type that crosses the client socket, and its framing.
//! - [`asuser`]: working on a path as whoever controls it, and its error.
//! - [`client`]: connecting to the daemon (and starting it), one request's round trip.
//! - [`doctor`]: doctor's findings as data, and the order of its checks.
//! - [`human`]: numbers as people read them.
//! - [`ident`]: which builderd owns a state dir, who controls a path, this process's user.
//! - [`hostkey`]: a host key given as one `TYPE BASE64` line.
//! - [`probe`]: tiny static programs per architecture, to learn which systems really run.
//! - [`served`]: what a root service serving another user takes from the administrator alone.

pub mod asuser;
pub mod client;
pub mod config;
pub mod doctor;
pub mod hostkey;
pub mod human;
pub mod ident;
pub mod probe;
pub mod protocol;
pub mod served;
