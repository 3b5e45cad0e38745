pub mod fixtures;
pub mod panics;
