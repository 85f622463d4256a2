//! Container configuration in berth's own terms (the CRI layer translates into these).
