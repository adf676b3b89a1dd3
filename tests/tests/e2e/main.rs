//! End-to-end tests against a real nats-server and a real PostgreSQL. One binary with
//! one module per capability keeps link time down.

mod auth;
mod bad_input;
mod compression;
mod cors;
mod crash;
mod idempotency;
mod json_schemas;
mod large_push;
mod leader;
mod lww;
mod metrics;
mod outage;
mod paging;
mod plans;
mod poison;
mod push_pull;
mod replay;
mod roles;
mod tail;
mod tenancy;
