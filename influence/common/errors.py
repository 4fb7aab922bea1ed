"""Errors that name the parameter to change as data, so that each front end words the fix in its own
vocabulary: the library says ``damping=24.6``, the command line ``--damping 24.6``.

A message mentions a parameter through :func:`param` (``"pass %s" % param("damping", 24.6)``); the
mention is kept as a marked span. :class:`InfluenceError` (a ``ValueError``) renders the spans in API
words for ``str(e)`` and keeps the marked text in ``e.template``; :func:`render` renders any marked
text with another spelling (the CLI passes its table of flags). No regular expression rewrites a
message: a reworded message renders the same way."""
import numbers

__all__ = ["InfluenceError", "param", "render", "api_spelling", "parameters", "warn"]

_OPEN, _SEP, _CLOSE = u"\ue000", u"\ue001", u"\ue002"
_NO_VALUE = object()


def param(name, value=_NO_VALUE, fmt=None):
    """A marked mention of parameter ``name`` inside a message: alone (``damping`` / ``--damping``) or
    with a value (``damping=24.6`` / ``--damping 24.6``). Numbers are written with ``fmt`` (default: as
    ``repr`` writes them, numpy scalars as Python numbers); strings are
    quoted in API words (``method='cg'``) and bare on the command line (``--solver cg``); anything else
    is written with ``repr``."""
    if value is _NO_VALUE:
        return _OPEN + name + _CLOSE
    if isinstance(value, str):
        text = "'" + value + "'"
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        text = repr(value)
    elif fmt is not None:
        text = fmt % value
    else:
        text = repr(int(value) if isinstance(value, numbers.Integral) else float(value))
    return _OPEN + name + _SEP + text + _CLOSE


def api_spelling(name, value):
    """How the library writes a mention: ``name`` or ``name=value``."""
    return name if value is None else "%s=%s" % (name, value)


def _spans(text):
    """Yield (plain text, None, None) and (None, name, value or None) pieces of a marked text."""
    pieces = text.split(_OPEN)
    yield pieces[0], None, None
    for piece in pieces[1:]:
        head, _, rest = piece.partition(_CLOSE)
        name, sep, value = head.partition(_SEP)
        yield None, name, (value if sep else None)
        yield rest, None, None


def render(text, spelling=api_spelling):
    """``text`` with every :func:`param` mention written by ``spelling(name, value)`` (value None for a
    bare mention; a string value arrives quoted). Text without mentions comes back unchanged."""
    text = str(text)
    if _OPEN not in text:
        return text
    out = []
    for plain, name, value in _spans(text):
        out.append(plain if name is None else spelling(name, value))
    return "".join(out)


def parameters(text):
    """The parameter names :func:`param` mentions in ``text``, in order."""
    return [name for _, name, _ in _spans(str(text)) if name is not None]


class InfluenceError(ValueError):
    """A refused input or setting: one line naming the value and the fix. ``template`` is the message
    with its parameter mentions marked (:func:`render` words them for another front end);
    ``parameters`` the names it mentions; ``parameter`` and ``suggestion``, when given, the parameter
    to change and a value that works (e.g. ``parameter="damping", suggestion=24.6``)."""

    def __init__(self, message, parameter=None, suggestion=None):
        self.template = str(message)
        self.parameter = parameter
        self.suggestion = suggestion
        super(InfluenceError, self).__init__(render(self.template))

    @property
    def parameters(self):
        return parameters(self.template)

    def render(self, spelling=api_spelling):
        return render(self.template, spelling)


def warn(category, template, stacklevel=2):
    """``warnings.warn`` of a message with :func:`param` mentions: the warning's text is in API words
    and ``warning.template`` keeps the marks (the CLI prints it in its flags)."""
    import warnings
    w = category(render(template))
    w.template = str(template)
    warnings.warn(w, stacklevel=stacklevel + 1)
