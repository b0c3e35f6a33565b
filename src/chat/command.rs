//! The command line parser: one inbound line → a [`Command`] borrowing from it.
//!
//! Grammar (PROTOCOL.md): tokens are separated by one space and TEXT is the rest
//! of the line. Command words are matched case-insensitively (`/JOIN` works).
//! Choices where the protocol is silent:
//! - an empty line is [`Command::Empty`], which the hub ignores (a stray Enter
//!   on a line client should not produce an error);
//! - a trailing space after a command word counts as no argument (`/leave `);
//! - `/say` and `/msg` need a non-empty TEXT;
//! - `/rooms` and `/help` take no argument;
//! - `/ping` and `/quit` take the whole rest of the line as TOKEN / TEXT;
//! - `/history ROOM after ID`: the word `after` is matched case-insensitively;
//!   N is a decimal count (the hub caps it at what it keeps);
//! - `/resume` checks the shape of TOKEN and of every `ROOM=ID` here, so the
//!   hub sees only well-formed pairs.
//!
//! CR and LF inside TEXT are left as they are here; the hub replaces them by
//! spaces while it writes the output line, which costs no extra copy.

use super::line::valid_id;
use super::names::{valid_nick, valid_room};
use super::ErrorCode;

/// One parsed command; names in it are already validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// An empty line: ignored.
    Empty,
    /// `TEXT` or `//TEXT`: say in the current room (`//x` says `/x`).
    Say(&'a str),
    /// `/nick NICK`.
    Nick(&'a str),
    /// `/join ROOM`.
    Join(&'a str),
    /// `/leave [ROOM]` (default: the current room).
    Leave(Option<&'a str>),
    /// `/say ROOM TEXT`.
    SayTo {
        /// The room, which the sender must be a member of.
        room: &'a str,
        /// The text.
        text: &'a str,
    },
    /// `/msg NICK TEXT`.
    Msg {
        /// The recipient.
        nick: &'a str,
        /// The text.
        text: &'a str,
    },
    /// `/rooms`.
    Rooms,
    /// `/who [ROOM]` (default: the current room).
    Who(Option<&'a str>),
    /// `/ping [TOKEN]`.
    Ping(Option<&'a str>),
    /// `/quit [TEXT]`.
    Quit(Option<&'a str>),
    /// `/help`.
    Help,
    /// `/kick ROOM NICK [TEXT]` (moderators only).
    Kick {
        /// The room to remove NICK from.
        room: &'a str,
        /// Who is removed.
        nick: &'a str,
        /// The reason, if any.
        text: Option<&'a str>,
    },
    /// `/caps [LIST]`: replace the capabilities with LIST (comma-separated,
    /// unknown names ignored); without LIST, report them.
    Caps(Option<&'a str>),
    /// `/history ROOM [N]` or `/history ROOM after ID [N]`.
    History {
        /// The room.
        room: &'a str,
        /// `after ID`: only messages after this id.
        after: Option<&'a str>,
        /// At most this many (default and maximum: the history kept).
        limit: Option<u32>,
    },
    /// `/resume TOKEN [ROOM=ID ...]`.
    Resume {
        /// The session token.
        token: &'a str,
        /// The `ROOM=ID` pairs, space-separated, already validated; iterate
        /// them with [`since_pairs`].
        since: Option<&'a str>,
    },
}

/// Why a line is not a valid command; each maps to an `ERR` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Longer than the configured maximum line (`too-long`).
    TooLong,
    /// A `/word` that is not a command (`bad-command`).
    UnknownCommand,
    /// A required argument is missing (`bad-command`); holds the usage.
    MissingArgument(&'static str),
    /// The command takes no argument (`bad-command`); holds the usage.
    UnexpectedArgument(&'static str),
    /// A nick argument outside the nick charset or length (`bad-nick`).
    BadNick,
    /// A room argument outside the room charset or length (`bad-room`).
    BadRoom,
}

impl ParseError {
    /// The `ERR` code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::TooLong => ErrorCode::TooLong,
            ParseError::UnknownCommand
            | ParseError::MissingArgument(_)
            | ParseError::UnexpectedArgument(_) => ErrorCode::BadCommand,
            ParseError::BadNick => ErrorCode::BadNick,
            ParseError::BadRoom => ErrorCode::BadRoom,
        }
    }

    /// The human-readable TEXT of the `ERR` line.
    pub fn text(&self) -> &'static str {
        match self {
            ParseError::TooLong => "line too long",
            ParseError::UnknownCommand => "unknown command, try /help",
            ParseError::MissingArgument(usage) | ParseError::UnexpectedArgument(usage) => usage,
            ParseError::BadNick => "nick must be 1-32 of A-Z a-z 0-9 _ . -",
            ParseError::BadRoom => "room must be 1-64 of A-Z a-z 0-9 _ . -",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.text())
    }
}

impl std::error::Error for ParseError {}

const USAGE_NICK: &str = "usage: /nick NICK";
const USAGE_JOIN: &str = "usage: /join ROOM";
const USAGE_SAY: &str = "usage: /say ROOM TEXT";
const USAGE_MSG: &str = "usage: /msg NICK TEXT";
const USAGE_ROOMS: &str = "usage: /rooms";
const USAGE_HELP: &str = "usage: /help";
const USAGE_KICK: &str = "usage: /kick ROOM NICK [TEXT]";
const USAGE_HISTORY: &str = "usage: /history ROOM [N] or /history ROOM after ID [N]";
const USAGE_RESUME: &str = "usage: /resume TOKEN [ROOM=ID ...]";

/// Longest session token accepted.
pub const MAX_TOKEN: usize = 64;

/// True when `token` could be a session token: 1–64 of the URL-safe base64
/// alphabet (`[A-Za-z0-9_-]`).
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `ROOM=ID` pairs of `/resume` (`sep` = `' '`, `kv` = `'='`) or the
/// `ROOM:ID` pairs of `?since=` (`sep` = `','`, `kv` = `':'`). A malformed
/// pair is `None`; empty items (`a:1,,b:2`) are skipped.
pub fn since_pairs(
    s: &str,
    sep: char,
    kv: char,
) -> impl Iterator<Item = Option<(&str, &str)>> + '_ {
    s.split(sep).filter(|p| !p.is_empty()).map(move |p| {
        let (room, id) = p.split_once(kv)?;
        (valid_room(room) && valid_id(id)).then_some((room, id))
    })
}

/// A decimal count for `/history`, at most `u32::MAX`.
fn count_arg(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn history_args(rest: Option<&str>) -> Result<Command<'_>, ParseError> {
    let missing = ParseError::MissingArgument(USAGE_HISTORY);
    let (room, rest) = split_arg(rest.ok_or(missing)?);
    let room = room_arg(room)?;
    let (after, rest) = match rest.map(split_arg) {
        Some((word, tail)) if word.eq_ignore_ascii_case("after") => {
            let (id, tail) = split_arg(tail.ok_or(missing)?);
            if !valid_id(id) {
                return Err(missing);
            }
            (Some(id), tail)
        }
        _ => (None, rest),
    };
    let limit = match rest {
        None => None,
        Some(n) => Some(count_arg(n).ok_or(missing)?),
    };
    Ok(Command::History { room, after, limit })
}

fn resume_args(rest: Option<&str>) -> Result<Command<'_>, ParseError> {
    let usage = ParseError::MissingArgument(USAGE_RESUME);
    let (token, since) = split_arg(rest.ok_or(usage)?);
    if !valid_token(token) {
        return Err(usage);
    }
    if let Some(since) = since {
        if since_pairs(since, ' ', '=').any(|p| p.is_none()) {
            return Err(usage);
        }
    }
    Ok(Command::Resume { token, since })
}

/// Split at the first space: `("a", Some("b c"))`; a missing or empty rest is `None`.
fn split_arg(s: &str) -> (&str, Option<&str>) {
    match s.split_once(' ') {
        Some((head, "")) => (head, None),
        Some((head, rest)) => (head, Some(rest)),
        None => (s, None),
    }
}

fn nick_arg(arg: &str) -> Result<&str, ParseError> {
    if valid_nick(arg) {
        Ok(arg)
    } else {
        Err(ParseError::BadNick)
    }
}

fn room_arg(arg: &str) -> Result<&str, ParseError> {
    if valid_room(arg) {
        Ok(arg)
    } else {
        Err(ParseError::BadRoom)
    }
}

/// Parse one line (without its line terminator). Lines longer than `max_line`
/// bytes are refused before anything else is looked at.
pub fn parse(line: &str, max_line: usize) -> Result<Command<'_>, ParseError> {
    if line.len() > max_line {
        return Err(ParseError::TooLong);
    }
    let Some(body) = line.strip_prefix('/') else {
        return Ok(if line.is_empty() {
            Command::Empty
        } else {
            Command::Say(line)
        });
    };
    if body.starts_with('/') {
        return Ok(Command::Say(body));
    }
    let (word, rest) = split_arg(body);
    let is = |name: &str| word.eq_ignore_ascii_case(name);
    if is("nick") {
        let arg = rest.ok_or(ParseError::MissingArgument(USAGE_NICK))?;
        Ok(Command::Nick(nick_arg(arg)?))
    } else if is("join") {
        let arg = rest.ok_or(ParseError::MissingArgument(USAGE_JOIN))?;
        Ok(Command::Join(room_arg(arg)?))
    } else if is("leave") || is("part") {
        Ok(Command::Leave(rest.map(room_arg).transpose()?))
    } else if is("say") {
        let (room, text) = split_arg(rest.ok_or(ParseError::MissingArgument(USAGE_SAY))?);
        let room = room_arg(room)?;
        let text = text.ok_or(ParseError::MissingArgument(USAGE_SAY))?;
        Ok(Command::SayTo { room, text })
    } else if is("msg") {
        let (nick, text) = split_arg(rest.ok_or(ParseError::MissingArgument(USAGE_MSG))?);
        let nick = nick_arg(nick)?;
        let text = text.ok_or(ParseError::MissingArgument(USAGE_MSG))?;
        Ok(Command::Msg { nick, text })
    } else if is("rooms") {
        match rest {
            None => Ok(Command::Rooms),
            Some(_) => Err(ParseError::UnexpectedArgument(USAGE_ROOMS)),
        }
    } else if is("who") {
        Ok(Command::Who(rest.map(room_arg).transpose()?))
    } else if is("ping") {
        Ok(Command::Ping(rest))
    } else if is("quit") {
        Ok(Command::Quit(rest))
    } else if is("help") {
        match rest {
            None => Ok(Command::Help),
            Some(_) => Err(ParseError::UnexpectedArgument(USAGE_HELP)),
        }
    } else if is("kick") {
        let (room, rest) = split_arg(rest.ok_or(ParseError::MissingArgument(USAGE_KICK))?);
        let room = room_arg(room)?;
        let (nick, text) = split_arg(rest.ok_or(ParseError::MissingArgument(USAGE_KICK))?);
        let nick = nick_arg(nick)?;
        Ok(Command::Kick { room, nick, text })
    } else if is("caps") {
        Ok(Command::Caps(rest))
    } else if is("history") {
        history_args(rest)
    } else if is("resume") {
        resume_args(rest)
    } else {
        Err(ParseError::UnknownCommand)
    }
}

impl<'a> Command<'a> {
    /// Same as [`parse`].
    pub fn parse(line: &'a str, max_line: usize) -> Result<Command<'a>, ParseError> {
        parse(line, max_line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Command<'_>, ParseError> {
        parse(line, 100)
    }

    #[test]
    fn plain_text_and_escape() {
        assert_eq!(p(""), Ok(Command::Empty));
        assert_eq!(p("hello world"), Ok(Command::Say("hello world")));
        assert_eq!(p(" "), Ok(Command::Say(" ")));
        assert_eq!(p("//help"), Ok(Command::Say("/help")));
        assert_eq!(p("//"), Ok(Command::Say("/")));
    }

    #[test]
    fn every_command() {
        assert_eq!(p("/nick Bob"), Ok(Command::Nick("Bob")));
        assert_eq!(p("/join dev"), Ok(Command::Join("dev")));
        assert_eq!(
            p("/kick dev bob spam  again"),
            Ok(Command::Kick {
                room: "dev",
                nick: "bob",
                text: Some("spam  again")
            })
        );
        assert_eq!(
            p("/KICK dev bob"),
            Ok(Command::Kick {
                room: "dev",
                nick: "bob",
                text: None
            })
        );
        assert_eq!(p("/kick dev"), Err(ParseError::MissingArgument(USAGE_KICK)));
        assert_eq!(p("/kick #dev bob"), Err(ParseError::BadRoom));
        assert_eq!(p("/leave"), Ok(Command::Leave(None)));
        assert_eq!(p("/leave "), Ok(Command::Leave(None)));
        assert_eq!(p("/leave dev"), Ok(Command::Leave(Some("dev"))));
        assert_eq!(p("/part dev"), Ok(Command::Leave(Some("dev"))));
        assert_eq!(
            p("/say dev hi  there"),
            Ok(Command::SayTo {
                room: "dev",
                text: "hi  there"
            })
        );
        assert_eq!(
            p("/msg bob a b"),
            Ok(Command::Msg {
                nick: "bob",
                text: "a b"
            })
        );
        assert_eq!(p("/rooms"), Ok(Command::Rooms));
        assert_eq!(p("/who"), Ok(Command::Who(None)));
        assert_eq!(p("/who dev"), Ok(Command::Who(Some("dev"))));
        assert_eq!(p("/ping"), Ok(Command::Ping(None)));
        assert_eq!(p("/ping a b"), Ok(Command::Ping(Some("a b"))));
        assert_eq!(p("/quit"), Ok(Command::Quit(None)));
        assert_eq!(p("/quit see ya"), Ok(Command::Quit(Some("see ya"))));
        assert_eq!(p("/help"), Ok(Command::Help));
        assert_eq!(p("/HELP"), Ok(Command::Help));
        assert_eq!(p("/Join Dev"), Ok(Command::Join("Dev")));
    }

    #[test]
    fn errors() {
        assert_eq!(p("/"), Err(ParseError::UnknownCommand));
        assert_eq!(p("/frob"), Err(ParseError::UnknownCommand));
        assert_eq!(p("/nickx a"), Err(ParseError::UnknownCommand));
        assert_eq!(p("/nick"), Err(ParseError::MissingArgument(USAGE_NICK)));
        assert_eq!(p("/nick a b"), Err(ParseError::BadNick));
        assert_eq!(p("/nick a!"), Err(ParseError::BadNick));
        assert_eq!(
            p(&format!("/nick {}", "n".repeat(33))),
            Err(ParseError::BadNick)
        );
        assert_eq!(p("/join"), Err(ParseError::MissingArgument(USAGE_JOIN)));
        assert_eq!(p("/join #dev"), Err(ParseError::BadRoom));
        assert_eq!(p("/join  dev"), Err(ParseError::BadRoom));
        assert_eq!(p("/leave #x"), Err(ParseError::BadRoom));
        assert_eq!(p("/say"), Err(ParseError::MissingArgument(USAGE_SAY)));
        assert_eq!(p("/say dev"), Err(ParseError::MissingArgument(USAGE_SAY)));
        assert_eq!(p("/say dev "), Err(ParseError::MissingArgument(USAGE_SAY)));
        assert_eq!(p("/say #d x"), Err(ParseError::BadRoom));
        assert_eq!(p("/msg"), Err(ParseError::MissingArgument(USAGE_MSG)));
        assert_eq!(p("/msg bob"), Err(ParseError::MissingArgument(USAGE_MSG)));
        assert_eq!(p("/msg b@b x"), Err(ParseError::BadNick));
        assert_eq!(
            p("/rooms x"),
            Err(ParseError::UnexpectedArgument(USAGE_ROOMS))
        );
        assert_eq!(
            p("/help me"),
            Err(ParseError::UnexpectedArgument(USAGE_HELP))
        );
        assert_eq!(p("/who #x"), Err(ParseError::BadRoom));
        assert_eq!(parse("abcd", 3), Err(ParseError::TooLong));
        assert_eq!(parse("abc", 3), Ok(Command::Say("abc")));
    }

    #[test]
    fn error_codes() {
        assert_eq!(ParseError::TooLong.code(), ErrorCode::TooLong);
        assert_eq!(ParseError::UnknownCommand.code(), ErrorCode::BadCommand);
        assert_eq!(ParseError::BadNick.code(), ErrorCode::BadNick);
        assert_eq!(ParseError::BadRoom.code(), ErrorCode::BadRoom);
        assert_eq!(
            ParseError::UnknownCommand.to_string(),
            "bad-command unknown command, try /help"
        );
    }

    #[test]
    fn v2_commands() {
        assert_eq!(p("/caps"), Ok(Command::Caps(None)));
        assert_eq!(p("/CAPS ids,resume"), Ok(Command::Caps(Some("ids,resume"))));
        let hist = |room, after, limit| Ok(Command::History { room, after, limit });
        assert_eq!(p("/history dev"), hist("dev", None, None));
        assert_eq!(p("/history dev 5"), hist("dev", None, Some(5)));
        assert_eq!(p("/history dev after 1-2"), hist("dev", Some("1-2"), None));
        assert_eq!(
            p("/history dev AFTER 1-2 0"),
            hist("dev", Some("1-2"), Some(0))
        );
        assert_eq!(p("/history after"), hist("after", None, None));
        assert_eq!(p("/history after after x"), hist("after", Some("x"), None));
        let usage = Err(ParseError::MissingArgument(USAGE_HISTORY));
        assert_eq!(p("/history"), usage);
        assert_eq!(p("/history dev x"), usage);
        assert_eq!(p("/history dev -1"), usage);
        assert_eq!(p("/history dev 99999999999"), usage);
        assert_eq!(p("/history dev after"), usage);
        assert_eq!(p("/history dev after a b"), usage);
        assert_eq!(p("/history dev after a!b"), usage);
        assert_eq!(p("/history #dev"), Err(ParseError::BadRoom));
        assert_eq!(
            p("/resume abc_-9"),
            Ok(Command::Resume {
                token: "abc_-9",
                since: None
            })
        );
        assert_eq!(
            p("/resume t dev=1-2 x=3"),
            Ok(Command::Resume {
                token: "t",
                since: Some("dev=1-2 x=3")
            })
        );
        let usage = Err(ParseError::MissingArgument(USAGE_RESUME));
        assert_eq!(p("/resume"), usage);
        assert_eq!(p("/resume a+b"), usage);
        assert_eq!(p("/resume t dev"), usage);
        assert_eq!(p("/resume t #d=1"), usage);
        assert_eq!(
            p("/resume t d=1  e=2"),
            Ok(Command::Resume {
                token: "t",
                since: Some("d=1  e=2")
            })
        );
        let pairs: Vec<_> = since_pairs("dev:1-2,,x:3", ',', ':').collect();
        assert_eq!(pairs, [Some(("dev", "1-2")), Some(("x", "3"))]);
        assert_eq!(since_pairs("dev", ',', ':').next(), Some(None));
    }

    #[test]
    fn multibyte_text_is_fine() {
        assert_eq!(p("héllo wörld"), Ok(Command::Say("héllo wörld")));
        assert_eq!(p("/é"), Err(ParseError::UnknownCommand));
        assert_eq!(p("/nick é"), Err(ParseError::BadNick));
    }
}
