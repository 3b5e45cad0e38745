pub mod cpu;
pub mod fixtures;
pub mod panics;
