//! rabbitry-bench: see the README.

fn main() {}
