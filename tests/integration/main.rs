//! End-to-end tests: real sshd peers, a real vsftpd, real bytes, MD5 checked on the server.
//! They drive Unix servers and Unix processes (signals, namespaces, `runuser`), so they
//! build on Unix only; elsewhere this test program has no tests.
#![cfg(unix)]

mod direct;
mod faults;
mod habits;
mod hardening;
mod harness;
mod hostkeys;
mod integrity;
mod offers;
mod peerside;
mod ratelimit;
mod release;
mod security;
mod send;
mod sftponly;
mod status;
mod windows;
