mod harness;
mod registry_harness;
