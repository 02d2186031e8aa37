#![allow(dead_code)]

pub mod images;
pub mod registry;
