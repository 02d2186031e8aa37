//! Pod networking through CNI.

pub mod conf;

pub use conf::{NetworkConfList, find_network};
