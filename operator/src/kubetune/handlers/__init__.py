"""Kopf handlers. Importing this package registers nothing: `kubetune operator` imports `kubetune.handlers.all`
(or `kopf run -m kubetune.handlers.all`), so that reading a setting elsewhere never installs the operator's
handlers into Kopf's global registry by accident."""
