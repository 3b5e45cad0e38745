//! tapegrad
