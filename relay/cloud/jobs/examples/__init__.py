"""
The example job kinds' programs, installed as C{relay-job-*} commands.
Each is an ordinary program (arguments in, files out, lines on stdout),
the way an administrator's own tools would be; none imports relay.
"""
