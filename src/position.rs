//! Stream positions as clients see them: an offset in the change stream plus the epoch it belongs
//! to, written `<offset>-<epoch>` (the epoch as 32 hex digits). The epoch changes whenever history
//! is lost, so a position from before that is recognisably stale, never silently reinterpreted.
//! Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Uuid,
    /// The stream position of the last change this position covers (0: none yet).
    pub offset: i64,
}

impl Position {
    pub fn new(epoch: Uuid, offset: i64) -> Position {
        Position { epoch, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.offset, self.epoch.simple())
    }
}

/// A position string that is not `<offset>-<32 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPosition;

impl fmt::Display for InvalidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid stream position: expected the id of an event this server sent")
    }
}

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Position, InvalidPosition> {
        let (offset, epoch) = s.trim().split_once('-').ok_or(InvalidPosition)?;
        let offset_ok = !offset.is_empty() && offset.len() <= 19 && offset.bytes().all(|b| b.is_ascii_digit());
        if !offset_ok || epoch.len() != 32 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidPosition);
        }
        let offset = offset.parse().map_err(|_| InvalidPosition)?;
        let epoch = Uuid::parse_str(epoch).map_err(|_| InvalidPosition)?;
        Ok(Position { epoch, offset })
    }
}

/// Why a client's position cannot be resumed from; the client must refetch its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Older than the retained history (pruned).
    Expired,
    /// From another epoch, or beyond the head (history was lost: truncated, restored).
    Reset,
}

impl Gap {
    pub fn as_str(self) -> &'static str {
        match self {
            Gap::Expired => "expired",
            Gap::Reset => "reset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let p = Position::new(Uuid::new_v4(), 42);
        let text = p.to_string();
        assert_eq!(text.len(), 2 + 1 + 32);
        assert_eq!(text.parse::<Position>(), Ok(p));
        assert_eq!(format!("0-{}", Uuid::nil().simple()).parse::<Position>(), Ok(Position::new(Uuid::nil(), 0)));
        for bad in [
            "",
            "42",
            "-",
            "x-00000000000000000000000000000000",
            "-1-00000000000000000000000000000000",
            "1-0000000000000000000000000000000",
            "1-0000000000000000000000000000000g",
            "99999999999999999999-00000000000000000000000000000000",
            "1-00000000-0000-0000-0000-000000000000",
        ] {
            assert_eq!(bad.parse::<Position>(), Err(InvalidPosition), "{bad:?}");
        }
    }
}
