"""Generated, download-free data: the Demo sign language, a CSL-News-shaped set and a tiny offline mT5."""
