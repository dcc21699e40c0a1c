//! Everything on the other end of an SSH connection: sessions, host keys and remote
//! commands (`ssh`), a peer as the client sees it (`peer`), the peer's own side
//! (`relay`), and the protocol between the two (`protocol`).

pub mod keys;
pub mod peer;
pub mod protocol;
pub mod quote;
pub mod relay;
pub mod ssh;
