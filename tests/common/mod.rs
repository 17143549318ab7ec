//! Shared harness for integration tests: real servers started from the
//! machine's own binaries, each on a free loopback port, torn down on drop.
#![allow(dead_code)]

pub mod certs;
pub mod collector;
pub mod drain;
pub mod http;
pub mod influx1;
pub mod pg;
pub mod proxy;
pub mod records;
pub mod relay;
pub mod retained;
pub mod vm;
