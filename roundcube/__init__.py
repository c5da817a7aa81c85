"""Roundcube + dovecot + rs-smtpd deployment and the recorded user actions (see README.md)."""
