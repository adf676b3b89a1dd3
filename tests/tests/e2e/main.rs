//! End-to-end tests against a real nats-server and a real PostgreSQL. One binary with
//! one module per capability keeps link time down.

mod push_pull;
