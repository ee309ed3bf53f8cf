//! rabbitry-relay: see the README.

fn main() {}
