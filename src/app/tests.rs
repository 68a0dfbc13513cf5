//! Unit tests of the use cases through in-memory fakes of their ports: a scripted Mastercard and
//! the in-memory store (behind a wrapper that fails chosen calls or loses the card lock). No
//! processes, no sockets, no Redis.

mod enroll;
mod enroll_steps;
mod errors;
pub(crate) mod fakes;
mod lifecycle;
mod status;
