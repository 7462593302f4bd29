//! Feed cursors: `<transaction id>-<global position>`, each as 16 lower-case hex digits, so
//! cursors also sort as text in feed order. READ_ALL in store/read.rs writes the same format.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    pub transaction_id: u64,
    pub position: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor { transaction_id: 0, position: 0 };

    pub fn parse(text: &str) -> Result<Cursor> {
        let bad = || {
            Error::invalid("invalid feed cursor")
                .detail(format!("cursor is \"{text}\""))
                .hint("Pass the cursor column of the last row read, or NULL to start at the beginning.")
        };
        let (xid, pos) = text.split_once('-').ok_or_else(bad)?;
        if xid.len() != 16 || pos.len() != 16 {
            return Err(bad());
        }
        let transaction_id = u64::from_str_radix(xid, 16).map_err(|_| bad())?;
        let position = i64::from_str_radix(pos, 16).map_err(|_| bad())?;
        Ok(Cursor { transaction_id, position })
    }

    /// The cursor of `after`, or the start when NULL.
    pub fn after(text: Option<&str>) -> Result<Cursor> {
        text.map_or(Ok(Cursor::START), Cursor::parse)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{:016x}", self.transaction_id, self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn round_trip_and_text_order() {
        let a = Cursor { transaction_id: 745, position: 12 };
        let b = Cursor { transaction_id: 745, position: 4096 };
        let c = Cursor { transaction_id: 746, position: 1 };
        assert_eq!(a.to_string(), "00000000000002e9-000000000000000c");
        for x in [a, b, c, Cursor::START] {
            assert_eq!(Cursor::parse(&x.to_string()).unwrap(), x);
        }
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert!(a < b && b < c);
    }

    #[test]
    fn malformed_cursors_are_rejected() {
        for bad in ["", "12-34", "00000000000002e9", "00000000000002e9-zzzzzzzzzzzzzzzz", "00000000000002e9-000000000000000c-1"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cursor::after(None).unwrap(), Cursor::START);
    }
}
