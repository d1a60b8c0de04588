"""The SMTP front door of email-to-fax: aiosmtpd speaks the protocol, our handler decides.

server.py owns the listeners and their lifetime (`SmtpServer`), session.py one session
(`GatewaySMTP`), handler.py answers each SMTP step (transactions.py keeps each session's
transaction, accept.py turns a checked message into a job and its 250), policy.py holds the
relay and toll-fraud rules, auth.py and users.py check SMTP AUTH logins, and replies.py names
every reply and rejection reason. Nothing is imported here, so the
`user` command can use users.py without loading the server.
"""
