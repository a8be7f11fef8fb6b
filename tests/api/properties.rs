//! Property tests of the token format and forward-auth parsing (filled in
//! below).
