//! The text of a panic, for tests of error messages.
#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};

/// The message `f` panics with, `"no panic"` if it returns, or
/// `"non-string panic"` for another payload.
pub fn panic_message(f: impl FnOnce()) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => "no panic".into(),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into()),
    }
}
