//! End-to-end tests: real sshd peers, a real vsftpd, real bytes, MD5 checked on the server.

mod direct;
mod faults;
mod habits;
mod hardening;
mod harness;
mod hostkeys;
mod integrity;
mod offers;
mod ratelimit;
mod release;
mod security;
mod send;
mod sftponly;
mod status;
