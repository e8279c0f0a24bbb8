"""The control plane: a Unix socket in the data dir that `e2eproxy ctl` talks to.

protocol.py     the JSON line format, ControlRequest, ControlError, the socket path
server.py       ControlServer: serves a table of handlers on the socket (`e2eproxy run`)
client.py       call(): one command, from `e2eproxy ctl`
commands.py     the table of commands `run` serves; handlers.py: helpers for writing one
render.py       how `e2eproxy ctl` shows each result to a person
verify_flow.py  `e2eproxy ctl verify @user`: a whole emoji verification in the terminal
"""
