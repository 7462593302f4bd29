//! The one error of the JSON engine: a program that is rejected when it is registered.

use std::fmt;

/// Why a program (or a path) was rejected, and at which step.
///
/// Displays as `step 2: unknown op "sett"`; the step is the 0-based index in the program array,
/// like `events[2]` elsewhere. Errors about the program as a whole have no step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramError {
    pub step: Option<usize>,
    pub message: String,
}

impl ProgramError {
    pub fn new(message: impl Into<String>) -> Self {
        ProgramError { step: None, message: message.into() }
    }

    /// The same error, placed at a step of a program.
    pub fn at(mut self, step: usize) -> Self {
        self.step = Some(step);
        self
    }
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(step) => write!(f, "step {step}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ProgramError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_with_and_without_a_step() {
        assert_eq!(ProgramError::new("unknown op \"sett\"").at(2).to_string(), "step 2: unknown op \"sett\"");
        assert_eq!(ProgramError::new("program must be a JSON array").to_string(), "program must be a JSON array");
    }
}
