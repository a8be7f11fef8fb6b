//! Black-box tests of patd: the real binary against a real redis-server.

mod bad_input;
mod helpers;
mod lifecycle;
mod limits;
mod operators;
mod redis_failure;
mod secrets;
mod tampered;
