"""Writes the Jinja chat-template fixtures for PivotText's tests (needs the pivot-ref venv: transformers, jinja2).

usage: make_jinja_fixtures.py [FIXTURES_DIR]   (default: Tests/PivotTextTests/Fixtures beside this script)

Everything is rendered by transformers' own renderer (`transformers.utils.chat_template_utils`), i.e. jinja2's
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loop controls, the `{% generation %}`
tracker, transformers' tojson (ensure_ascii=False), raise_exception, strftime_now, dict and namespace.

Fixtures written to FIXTURES_DIR/jinja/:
  snippets.json     [{name, template, context, output}] or, for templates that fail, {error, error_type, line}
                    (line: jinja2's line number for syntax errors, null for errors raised while rendering)
  templates.json    [{name, template, special_tokens, cases: [{label, context, text} or {label, context, error}]}]
                    context is everything the template sees: messages, tools, documents, add_generation_prompt
                    and the special tokens; cases of the generation-tagged template also hold `generation`, the
                    assistant character spans [[start, end], ...] in code points
  generation-qwen2.json  ids and assistant_masks from apply_chat_template(return_assistant_tokens_mask=True) with
                    the Qwen2 fixture tokenizer, for the generation-tagged template
  qwen2-saved/      tokenizer_config.json and chat_template.jinja as transformers' save_pretrained writes them for
                    the Qwen2 fixture tokenizer (the template no longer sits in tokenizer_config.json)

Contexts are JSON text (a string field), so that their key order, which `tojson` shows, survives the reader.
"""
import gzip
import json
import os
import shutil
import sys
import tempfile

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "Tests", "PivotTextTests", "Fixtures")

# --- Pure-Jinja snippets: (name, template, context) ------------------------------------------------------------

USERS = [{"name": "ann", "age": 31}, {"name": "bo", "age": 25}, {"age": 40}]
MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "tool": "calc"}, {"role": "user", "content": "2+2"}]

SNIPPETS = [
    # text, comments, whitespace control, trim_blocks, lstrip_blocks
    ("text and variable", "Hello {{ name }}!", {"name": "世界"}),
    ("comments", "{# comment #}a{# multi\nline #}b", {}),
    ("minus strips both sides", "a  {{- ' b ' -}}  c", {}),
    ("block minus strips newlines", "a\n\n  {%- if true -%}\n\n  b  \n{%- endif %}\nc", {}),
    ("trim and lstrip blocks", "{% if true %}\n  yes\n{% endif %}\nend", {}),
    ("lstrip at template start", "  {% if true %}x{% endif %}  \ny", {}),
    ("lstrip only before the tag", "a\n    {%- if true %}b{% endif %}", {}),
    ("lstrip keeps text before tag", "ab  {% if true %}c{% endif %}", {}),
    ("for list with trim blocks", "{% for x in xs %}\n  - {{ x }}\n{% endfor %}", {"xs": [1, 2]}),
    ("plus disables lstrip", "  {%+ if true %}x{% endif %}", {}),
    ("plus disables trim", "{% if true +%}\nx{% endif %}", {}),
    ("newline after variable kept", "{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("comment trims its newline", "x {# c #}\ny\n  {# d #}\nz", {}),
    ("raw block", "{% raw %}{{ not parsed }} {% if %}{% endraw %}!", {}),
    ("newline normalisation", "line1\r\nline2\rline3\n\n", {}),
    ("minus comment", "a  {#- c -#}  b", {}),
    ("variable does not lstrip", "a\n  {{ 'b' }}", {}),
    ("tabs and unicode spaces lstrip", "x\n\t \u3000{% if true %}y{% endif %}", {}),
    # literals and operators
    ("string escapes", "{{ 'it\\'s' }} {{ \"tab\\there\" }} {{ '\\u4e2d\\x41\\n|' }} {{ 'a' 'b' }} {{ 'back\\\\slash' }}", {}),
    ("arithmetic", "{{ 1 + 2 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} "
                   "{{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e3 }} {{ 10 / 4 }} {{ 1_000 }} {{ 0x1F }} {{ 4 / 2 }} {{ 7.5 // 2 }}", {}),
    ("power and unary minus", "{{ -2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ 2 ** -1 }} {{ -(3) }} {{ +4 }}", {}),
    ("float formatting", "{{ 1e15 }} {{ 1e16 }} {{ 1/3 }} {{ 1e-5 }} {{ 0.0001 }} {{ 123456789012345678.0 }} {{ 2.5e-10 }} {{ -0.0 }} {{ 3.0 }}", {}),
    ("string and list operators", "{{ 'ab' * 3 }} {{ 2 * 'c' }} {{ [1] + [2, 3] }} {{ 'a' ~ 1 ~ none ~ true }} {{ 'x' + 'y' }} {{ [0] * 3 }}", {}),
    ("literals render as python", "{{ [1, 'a', none, true, 1.5, (1, 2), {'k': 'v'}] }} {{ (1,) }} {{ () }} {{ {} }} {{ [] }} "
                                  "{{ True }} {{ None }} {{ false }} {{ [\"it's\"] }} {{ {'a': [none]} }}", {}),
    ("comparisons", "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 1 != 2 }} "
                    "{{ 3 >= 3 }} {{ 2 <= 1 }} {{ true == 1 }} {{ none == none }} {{ [1, 2] < [1, 3] }} {{ {'a': 1} == {'a': 1} }}", {}),
    ("membership", "{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' not in 'abc' }} {{ 3 not in [1] }} "
                   "{{ 'role' in m }} {{ 'tool_calls' in m }}", {"m": {"role": "user"}}),
    ("and or not", "{{ none or 'd' }} {{ 0 and 'x' }} {{ 'a' and 'b' }} {{ not '' }} {{ not [1] }} {{ [] or {} or 'last' }} {{ not 1 == 2 }}", {}),
    ("short circuit", "{{ false and raise_exception('no') }} {{ true or raise_exception('no') }} {{ none and none.x }}", {}),
    ("conditional expression", "{{ 'y' if 1 else 'n' }} {{ 'y' if 0 else 'n' }} [{{ 'y' if 0 }}] {{ 'a' if false else 'b' if true else 'c' }}", {}),
    ("attributes and items", "{{ d.a }} {{ d['b'][0] }} {{ d.b[-1] }} [{{ d.missing }}] {{ d.a.upper() }} {{ d['c']['e'] }} {{ d.c.e }} {{ d.b.1 }}",
     {"d": {"a": "x", "b": [1, 2, 3], "c": {"e": "deep"}}}),
    ("slices", "{{ xs[1:] }} {{ xs[::-1] }} {{ xs[:2] }} {{ xs[-2:] }} {{ 'hello'[1:4] }} {{ 'hello'[::-1] }} {{ xs[::2] }} {{ xs[1:-1] }} {{ xs[10:] }}",
     {"xs": [1, 2, 3, 4, 5]}),
    ("string indexing by code point", "{{ s[1] }} {{ s[-1] }} {{ s|length }} {{ s[:2] }} [{{ s[9] }}]", {"s": "中文字😀"}),
    ("dict literal access", "{{ {'a': 1, 'b': 2}['b'] }} {{ {'a': 1}.a }} {{ [10, 20][1] }} [{{ [1][5] }}]", {}),
    ("undefined is quiet", "[{{ nothing }}] {{ nothing is defined }} {{ nothing is undefined }} {{ nothing | default('dflt') }} "
                          "{{ nothing is none }} {% if nothing %}t{% else %}f{% endif %} {{ nothing|length }} {{ 'a' ~ nothing ~ 'b' }} "
                          "{% for x in nothing %}x{% endfor %}|{{ nothing == nothing2 }} {{ 'x' in nothing }} {{ nothing|list }}", {}),
    ("none and default", "{{ none }} {{ none is none }} {{ none | default('x') }} {{ none | default('x', true) }} "
                         "{{ '' | default('e', boolean=true) }} {{ 0|d('zero', true) }} {{ missing|d('z') }}", {}),
    ("missing keys are undefined", "{{ m.tool_calls is defined }} {{ m['x'] is defined }} [{{ m.x }}] {{ m.role }}", {"m": {"role": "user"}}),
    # control structures
    ("loop variables", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
                       "{{ loop.revindex }}{{ loop.revindex0 }}|{% endfor %}", {}),
    ("for else", "{% for x in [] %}x{% else %}empty{% endfor %} {% for x in [1] %}{{ x }}{% else %}empty{% endfor %}", {}),
    ("for with filter condition", "{% for x in range(10) if x is odd %}{{ x }}{{ ',' if not loop.last }}{% endfor %} "
                                  "{% for x in [1, 2] if x > 5 %}x{% else %}none{% endfor %}", {}),
    ("for over items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("for over dict keys", "{% for k in d %}{{ k }}{% endfor %} {% for a, b in [[1, 2], (3, 4)] %}{{ a }}{{ b }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("nested loops", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [3, 4] %}{{ outer.index }}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{% endfor %}", {}),
    ("break and continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("previtem and nextitem", "{% for x in [1, 2, 3] %}{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}", {}),
    ("loop cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}", {}),
    ("if elif else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    ("set inside a loop stays in the loop", "{% set x = 1 %}{% for i in [1] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("loop body scope is per iteration", "{% for i in [1, 2] %}{% set y = (y or 0) + i %}{{ y }}{% endfor %}", {}),
    ("set inside if leaks", "{% if true %}{% set z = 5 %}{% endif %}{{ z }}", {}),
    ("set shadows a context variable", "{% set messages = messages[1:] %}{{ messages|length }}", {"messages": [1, 2, 3]}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for i in range(5) %}{% set ns.count = ns.count + i %}"
                  "{% if i == 3 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }} [{{ ns.other }}]", {}),
    ("namespace from a dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{% set ns.c = 3 %}{{ ns.c }}", {}),
    ("block set", "{% set block %}Hello {{ name }}{% endset %}[{{ block }}]{% set t | upper %}abc{% endset %}{{ t }}", {"name": "x"}),
    ("tuple set", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}", {}),
    ("macro with defaults", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}"
                            "{{ greet('Ann') }} {{ greet('Bo', greeting='Hi') }} {{ greet('Cy', 'Yo') }} [{{ greet() }}]", {}),
    ("recursive macro", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
    ("macro sees the latest outer value", "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}", {}),
    ("macro varargs and kwargs", "{% macro f(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, 3, k='v') }}", {}),
    ("macro output is a string", "{% macro m() %} x {% endmacro %}[{{ m()|trim }}]{{ m()|length }}", {}),
    ("filter block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}", {}),
    ("with block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", {}),
    ("generation tag renders its body", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
                                        "{% else %}{{ m.content }}{% endif %}|{% endfor %}", {"messages": MESSAGES}),
    ("print statement", "{% print 'a', 1 %}", {}),
    # filters
    ("string filters", "{{ '  x  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'Hello'|upper }}|{{ 'Hello'|lower }}|{{ 'hello WORLD'|capitalize }}|"
                       "{{ 'hello wORLD-foo (bar'|title }}|{{ 'x'|safe }}|{{ 3|string ~ '!' }}", {}),
    ("sequence filters", "{{ [1, 2, 3]|length }} {{ 'abc'|count }} {{ {'a': 1}|length }} {{ [3, 1, 2]|first }} {{ [3, 1, 2]|last }} "
                         "{{ [1, 2]|join(', ') }} {{ ['a', 'b']|join }} {{ 'abc'|first }} {{ 'abc'|last }} [{{ []|first }}]", {}),
    ("conversion filters", "{{ 'abc'|list }} {{ '12'|int + 1 }} {{ '1.5'|float }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} "
                           "{{ '1A'|int(base=16) }} {{ ' 7 '|int }} {{ '2.5'|int }} {{ true|int }} {{ 2|float }} {{ 'nope'|float }} {{ (1, 2)|list }} {{ {'a': 1}|list }}", {}),
    ("reverse and replace", "{{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }} {{ 'a-b-c'|replace('-', '+') }} {{ 'aaa'|replace('a', 'b', 2) }} "
                            "{% for x in [1, 2]|reverse %}{{ x }}{% endfor %}", {}),
    ("items filter", "{% for k, v in {'x': 1, 'y': 2}|items %}{{ k }}{{ v }}{% endfor %}", {}),
    ("selectattr and rejectattr", "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }} "
                                  "{{ messages|rejectattr('role', 'eq', 'user')|list|length }} {{ messages|selectattr('tool')|list|length }} "
                                  "{{ messages|selectattr('tool', 'defined')|map(attribute='tool')|first }} "
                                  "{{ messages|rejectattr('tool', 'undefined')|list|length }}", {"messages": MESSAGES}),
    ("map", "{{ ['a', 'b']|map('upper')|join }} {{ users|map(attribute='name', default='?')|join(',') }} {{ [1, 'x']|map('string')|list }} "
            "{{ ['a ', ' b']|map('trim')|list }} {{ ['a-b']|map('replace', '-', '+')|first }}", {"users": USERS}),
    ("tojson", "{{ {'a': [1, 2.5, none, true], 'b': '中文 \"q\" \\\\ \\n', 'c': {}}|tojson }} {{ 'x'|tojson }} {{ 3|tojson }} {{ [1, [2]]|tojson }}", {}),
    ("tojson indent", "{{ {'a': {'b': [1, {}], 'c': []}, 'd': 'x'}|tojson(indent=2) }}", {}),
    ("tojson options", "{{ {'b': 1, 'a': '\\u0001\\t'}|tojson(sort_keys=true) }} {{ '中'|tojson(ensure_ascii=true) }} "
                       "{{ [1, 2]|tojson(separators=(',', ':')) }} {{ {'k': 1.0, 'n': -3}|tojson }} {{ tools|tojson(indent=4) }}",
     {"tools": [{"name": "get_weather", "parameters": {"type": "object", "required": ["city"]}}]}),
    ("indent", "{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\n\nb'|indent(width='> ', blank=true) }}|{{ 'one'|indent }}", {}),
    ("unique and sort", "{{ ['b', 'A', 'a', 'c', 'b']|unique|list }} {{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} "
                        "{{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [3, 1, 2]|sort(reverse=true) }} "
                        "{{ users[:2]|sort(attribute='age')|map(attribute='name')|join }}", {"users": USERS}),
    ("select and reject", "{{ [1, 2, 3, 4]|select('even')|list }} {{ [1, none, 2]|reject('none')|list }} {{ [1, 2, 3]|select('greaterthan', 1)|list }} "
                          "{{ [0, 1, '', 'a']|select|list }}", {}),
    ("numeric filters", "{{ -3|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} {{ [1, 2, 3]|sum }} {{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} "
                        "{{ users[:2]|sum(attribute='age') }} {{ 7|round }}", {"users": USERS}),
    ("format", "{{ '%s-%d'|format('a', 3) }} {{ '%s and %s' % ('x', 'y') }} {{ '%s!' % 'z' }} {{ '%05.1f|%x|%%' % (3.14159, 255) }}", {}),
    ("dictsort", "{% for k, v in {'b': 1, 'a': 2}|dictsort %}{{ k }}{{ v }}{% endfor %}", {}),
    ("filter on unary minus", "{{ -1|abs }} {{ (-1)|abs }} {{ 'a' ~ 'b'|upper }}", {}),
    # tests
    ("type tests", "{{ 'a' is string }} {{ 1 is string }} {{ {} is mapping }} {{ [] is mapping }} {{ [] is iterable }} {{ 'a' is iterable }} "
                   "{{ 1 is iterable }} {{ [] is sequence }} {{ 1 is number }} {{ 1.5 is number }} {{ 'a' is number }} {{ true is boolean }} "
                   "{{ 1 is boolean }} {{ true is true }} {{ 1 is true }} {{ false is false }} {{ none is none }} {{ {} is sequence }} "
                   "{{ true is number }} {{ nothing is iterable }}", {}),
    ("value tests", "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ 'a' is equalto 'a' }} {{ 1 is eq 1 }} "
                    "{{ 1 is ne 2 }} {{ 2 is gt 1 }} {{ 2 is lt 1 }} {{ 2 is ge 2 }} {{ 2 is le 1 }} {{ 'a' is in 'abc' }} {{ 1 is integer }} "
                    "{{ 1.0 is float }} {{ true is integer }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 2 is sameas 2 }} {{ none is sameas none }}", {}),
    ("negated tests", "{{ x is not defined }} {{ x is not none }} {{ none is not none }} {{ range is callable }} {{ 'a' is not string }}", {}),
    ("tests on messages", "{{ messages[0] is mapping }} {{ messages[0].content is string }} {{ messages is sequence }}", {"messages": MESSAGES}),
    # methods and globals
    ("strip methods", "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ 'a\n\n'.rstrip('\n') }}|{{ '\u3000a\t'.strip() }}", {}),
    ("split methods", "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a<think>b</think>c'.split('</think>')[-1] }} "
                      "{{ 'a.b.c'.rsplit('.', 1) }} {{ 'a\nb\r\nc'.splitlines() }} {{ 'a b'.split(none, 1) }}", {}),
    ("string predicates and case", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'Hi'.upper() }} "
                                   "{{ 'Hi'.lower() }} {{ 'a-b'.replace('-', '_') }} {{ \"they're bill's friends\".title() }} {{ 'abc'.capitalize() }} "
                                   "{{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }}", {}),
    ("string format method", "{{ '{} + {} = {total}'.format(1, 2, total=3) }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{{x}}'.format() }} {{ '{}'.format(none) }}", {}),
    ("string join count find", "{{ ', '.join(['a', 'b']) }} {{ 'banana'.count('a') }} {{ 'banana'.find('n') }} {{ 'abc'.find('z') }} {{ 'abc'.index('c') }} "
                               "{{ 'a=b=c'.partition('=') }} {{ 'a b'.rpartition(' ') }}", {}),
    ("dict methods", "{{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('z', 'none') }} {{ d.get('z') }} "
                     "{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %} {{ d.items()|list }}", {"d": {"a": 1, "b": 2}}),
    ("globals", "{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ dict(a=1, b='x') }} {{ namespace(a=1).a }} "
                "{{ strftime_now('%Y')|length }} {{ range(0)|list }}", {}),
    ("list methods", "{{ [1, 2, 1].count(1) }} {{ ['a', 'b'].index('b') }}", {}),
    ("realistic system prompt", "{%- if messages[0]['role'] == 'system' -%}\n    {%- set system = messages[0]['content'] -%}\n"
                                "    {%- set rest = messages[1:] -%}\n{%- else -%}\n    {%- set system = 'default' -%}\n    {%- set rest = messages -%}\n"
                                "{%- endif -%}\n[{{ system }}]\n{%- for m in rest %}\n<{{ m.role }}>{{ m.content }}\n{%- endfor %}",
     {"messages": MESSAGES}),
    ("precedence of filters and operators", "{{ messages|length - 1 }} {{ 'a' if x is defined and x else 'b' }} {{ (messages|last).content }} "
                                            "{{ messages[-1]['role'] }} {{ messages[1:]|length }} {{ 'tool' not in messages[0].role }}",
     {"messages": MESSAGES}),
    ("namespace accumulation", "{%- set ns = namespace(text='') -%}\n{%- for m in messages -%}\n    {%- set ns.text = ns.text ~ m.role[0] -%}\n"
                               "{%- endfor -%}\n{{ ns.text }}", {"messages": MESSAGES}),
    ("whitespace inside loops", "{%- for x in xs -%}\n  {{ x }}\n{%- endfor %}|\n  {{- 'y' }}\n{%- if true %}\n    a\n{%- endif %}", {"xs": [1, 2]}),
    ("more numbers", "{{ 3 // 0.5 }} {{ 2 ** 0.5 }} {{ 7.0 % 2.5 }} {{ -7.5 // 2 }} {{ 'x' ~ 1.0 }} {{ [1, 2] ~ 'x' }} {{ '%s' % [1, 'a'] }} "
                     "{{ 'Hello %(name)s' % {'name': 'Bo'} }} {{ '%.2f'|format(3.14159) }} {{ 1e100 }} {{ 12345.678e3 }}", {}),
    ("more slices", "{{ 'abc'[5:] }}|{{ [1, 2, 3][-5:] }}|{{ [1, 2, 3][:-5] }}|{{ 'abcdef'[-3::-1] }}|{{ [1, 2, 3, 4][3:0:-2] }}", {}),
    ("unicode case", "{{ 'ÄÖÜ'|lower }} {{ 'straße'|upper }} {{ 'ǆemal'|capitalize }} {{ 'hello world'.title() }} {{ 'ΣΑΣ'.lower() }}", {}),
    ("json of scalars", "{{ none|string }} {{ none|tojson }} {{ true|tojson }} {{ (1, 2)|tojson }} {{ {'a': 1}|tojson(indent=none) }} "
                        "{{ 1.5e300|tojson }} {{ {1: 'x', true: 'y'}|tojson }} {{ '\u2028 \x7f é 😀'|tojson }} {{ 'é😀'|tojson(ensure_ascii=true) }}", {}),
    ("joins and maps", "{{ range(3)|join(',') }} {{ messages|map(attribute='role')|unique|list }} {{ [1, [2, 3]]|join('-') }} "
                       "{{ messages|map(attribute='content')|map('length')|sum }}", {"messages": MESSAGES}),
    ("braces inside strings", "{{ '}}' }} {{ \"{{\" }} {# {{ not a var }} #}{{ {'a': {'b': 1}}['a'] }}", {}),
    ("macro default uses an earlier parameter", "{% macro m(a, b=a ~ '!') %}{{ b }}{% endmacro %}{{ m('x') }} {{ m('x', 'y') }}", {}),
    ("conditional attribute access", "[{{ x.y.z if x is defined }}] {% if x is defined and x.y %}no{% else %}ok{% endif %}", {}),
    ("loop outside a loop", "[{{ loop }}] [{{ loop.index }}]", {}),
    ("dictsort by value", "{% for k, v in {'a': 3, 'b': 1, 'c': 2}|dictsort(by='value', reverse=true) %}{{ k }}{% endfor %}", {}),
    ("string multiplication and joins", "{{ '=' * 5 }} {{ '-'.join('abc') }} {{ ''.join(['x', 'y']) }} {{ 'a,b'.split(',')|join('+') }}", {}),
    ("truthiness of values", "{% for v in [0, 0.0, '', [], {}, none, 1, 'a', [0], {'k': 0}] %}{{ 't' if v else 'f' }}{% endfor %}", {}),
    ("in with dict keys and tuples", "{{ 'a' in {'a': 1}.keys() }} {{ 1 in (1, 2) }} {{ (1, 2) in [(1, 2)] }} {{ [1] in [[1]] }}", {}),
    # errors
    ("raise_exception", "a{{ raise_exception('Custom failure 中文') }}", {}),
    ("syntax error names the line", "line1\n{% if %}", {}),
    ("unterminated for", "a\nb\n{% for x in xs %}\nno end", {}),
    ("unknown filter", "a\n\n{{ x | nosuchfilter }}", {}),
    ("unknown test", "{{ x is nosuchtest }}", {}),
    ("stray end tag", "ok\n{% endfor %}", {}),
    ("missing operand", "{{ 1 + }}", {}),
    ("type error", "{{ 'abc' + 1 }}", {}),
    ("attribute of undefined", "{{ x.y }}", {}),
    ("range too big", "{{ range(200000)|length }}", {}),
    ("unknown tag", "\n\n{% foo %}", {}),
    ("division by zero", "{{ 1 / 0 }}", {}),
    ("namespace private name", "{% set ns = namespace(_x=1) %}", {}),
    ("tojson of undefined", "{{ nothing|tojson }}", {}),
    ("iterating a number", "{% for x in 5 %}{% endfor %}", {}),
    ("unbalanced brace", "{{ 'a' }", {}),
    ("unclosed comment", "x\n{# unclosed", {}),
    ("unterminated string", "{{ 'abc }}", {}),
    ("else without if", "{% else %}", {}),
    ("call of undefined", "{{ nothing() }}", {}),
    ("unsafe method", "{{ [1].append(2) }}", {}),
    ("string minus number", "{% set a = 'x' %}{{ a - 1 }}", {}),
]

# --- Real chat templates ---------------------------------------------------------------------------------------


def fixture_config(name):
    return json.load(open(os.path.join(FIXTURES, name, "tokenizer_config.json"), encoding="utf-8"))


MISTRAL_INSTRUCT = (  # Mistral-7B-Instruct-v0.1/v0.2
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

MISTRAL_V3 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

GEMMA = (  # gemma-2-it
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

PHI3 = (  # Phi-3-mini-4k-instruct
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

LLAMA2 = (  # Llama-2-chat
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

QWEN25_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CHATML_GENERATION = """{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {{- message.content + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MACRO_TEMPLATE = """{#- A template in the style of tool-using models: macros, block set, loop.cycle and filters. -#}
{%- macro render_turn(role, content, close='<|end|>') -%}
<|{{ role }}|>{{ content | trim }}{{ close }}
{% endmacro -%}
{%- set header %}{{ bos_token }}[{{ messages | length }} turns]{% endset -%}
{{ header }}
{% for message in messages -%}
{{ render_turn(message.role | upper, message.content) }}
{%- endfor -%}
{%- if add_generation_prompt %}<|ASSISTANT|>{% endif -%}"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city, 天气",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "required": ["city"]}}}]

CONVERSATIONS = {
    "single turn": [{"role": "user", "content": "What is in the image?"}, {"role": "assistant", "content": "A red circle."}],
    "system multi-turn chinese": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "这张图片里有什么？"}, {"role": "assistant", "content": "一个红色的圆形。"},
        {"role": "user", "content": "What colour is it?"}, {"role": "assistant", "content": "It is red.\n\nVery red."}],
    "user only": [{"role": "user", "content": "床前明月光"}],
    "image marker": [{"role": "user", "content": "<image>\n描述这张图片。"}, {"role": "assistant", "content": "一只猫。"}],
    "whitespace": [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": "\nfour, five 😀 "}],
    "roles out of order": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "system then user": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
}

TOOL_CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "abc123xyz",
                                                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "22°C, sunny", "tool_call_id": "abc123xyz"},
    {"role": "assistant", "content": "It is 22°C and sunny."},
]

THINKING_CONVERSATION = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nsimple sum\n</think>\n\n4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"},
]


def templates():
    qwen2 = fixture_config("qwen2")
    smollm2 = fixture_config("smollm2")
    llama3 = fixture_config("llama3")
    chatml_tokens = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    return [
        # (name, template, special tokens, extra cases: (label, messages, tools, extra variables))
        ("qwen2", qwen2["chat_template"], chatml_tokens, []),
        ("smollm2", smollm2["chat_template"], {"bos_token": smollm2["bos_token"], "eos_token": smollm2["eos_token"],
                                               "pad_token": smollm2["pad_token"], "unk_token": smollm2["unk_token"]}, []),
        ("llama3", llama3["chat_template"], {"bos_token": llama3["bos_token"], "eos_token": llama3["eos_token"]}, []),
        ("mistral-instruct", MISTRAL_INSTRUCT, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, []),
        ("mistral-v3-tools", MISTRAL_V3, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
         [("tools", TOOL_CONVERSATION[1:], TOOLS, {})]),
        ("gemma", GEMMA, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}, []),
        ("phi3", PHI3, {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}, []),
        ("zephyr", ZEPHYR, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, []),
        ("llama2", LLAMA2, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, []),
        ("qwen2.5-tools", QWEN25_TOOLS, chatml_tokens, [("tools", TOOL_CONVERSATION, TOOLS, {})]),
        ("qwen3", QWEN3, chatml_tokens, [("tools", TOOL_CONVERSATION, TOOLS, {}), ("thinking", THINKING_CONVERSATION, None, {}),
                                         ("thinking off", THINKING_CONVERSATION[:1], None, {"enable_thinking": False})]),
        ("llama3.2-tools", LLAMA32, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
         [("tools", TOOL_CONVERSATION[:2], TOOLS, {"date_string": "26 Jul 2024"}),
          ("tool call", TOOL_CONVERSATION, TOOLS, {"date_string": "26 Jul 2024", "tools_in_user_message": False})]),
        ("chatml-generation", CHATML_GENERATION, chatml_tokens, []),
        ("macros", MACRO_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>"}, []),
    ]


def render(template, messages, tools, variables, generation):
    """The text (and generation spans) transformers renders, or the error it raises."""
    try:
        rendered, spans = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                                return_assistant_tokens_mask=generation, **variables)
    except jinja2.exceptions.TemplateError as error:
        return {"error": str(error)}
    result = {"text": rendered[0]}
    if generation:
        result["generation"] = [list(span) for span in spans[0]]
    return result


def template_fixtures():
    rows = []
    for name, template, tokens, extra in templates():
        generation = "{% generation" in template or "{%- generation" in template
        cases = []
        conversations = [(label, messages, None, {}) for label, messages in CONVERSATIONS.items()] + extra
        for label, messages, tools, variables in conversations:
            for add_generation_prompt in (False, True):
                bound = {**tokens, **variables, "add_generation_prompt": add_generation_prompt}
                context = {"messages": messages, "tools": tools, "documents": None, **bound}
                case = {"label": label, "context": json.dumps(context, ensure_ascii=False)}
                case.update(render(template, messages, tools, bound, generation))
                cases.append(case)
        rows.append({"name": name, "template": template, "special_tokens": tokens, "cases": cases})
    return rows


def snippet_fixtures():
    rows = []
    for name, template, context in SNIPPETS:
        row = {"name": name, "template": template, "context": json.dumps(context, ensure_ascii=False)}
        try:
            row["output"] = _compile_jinja_template(template).render(**context)
        except jinja2.exceptions.TemplateSyntaxError as error:
            row.update(error=error.message, error_type=type(error).__name__, line=error.lineno)
        except Exception as error:  # runtime errors: TemplateError, TypeError, OverflowError, ZeroDivisionError, ...
            row.update(error=str(error), error_type=type(error).__name__, line=None)
        rows.append(row)
    return rows


def unpacked_qwen2(work):
    """The Qwen2 fixture folder with its tokenizer.json decompressed."""
    folder = os.path.join(work, "qwen2")
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(FIXTURES, "qwen2", "tokenizer.json.gz"), "rb") as src, open(os.path.join(folder, "tokenizer.json"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(os.path.join(FIXTURES, "qwen2", "tokenizer_config.json"), folder)
    return folder


def saved_qwen2_fixture(out):
    """What current transformers writes when it saves the Qwen2 tokenizer: the template in chat_template.jinja."""
    from transformers import AutoTokenizer
    target = os.path.join(out, "qwen2-saved")
    with tempfile.TemporaryDirectory() as work:
        AutoTokenizer.from_pretrained(unpacked_qwen2(work)).save_pretrained(os.path.join(work, "saved"))
        os.makedirs(target, exist_ok=True)
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(os.path.join(work, "saved", name), target)
    assert "chat_template" not in json.load(open(os.path.join(target, "tokenizer_config.json")))


def generation_token_fixture():
    """ids and assistant masks for the generation-tagged template with the real Qwen2 tokenizer."""
    from transformers import PreTrainedTokenizerFast
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(unpacked_qwen2(work), "tokenizer.json")
        hf = PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = CHATML_GENERATION
    rows = []
    for label in ("single turn", "system multi-turn chinese", "image marker", "whitespace"):
        messages = CONVERSATIONS[label]
        out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        rows.append({"label": label, "messages": messages, "ids": out["input_ids"], "assistant_masks": out["assistant_masks"]})
    return rows


def main():
    out = os.path.join(FIXTURES, "jinja")
    os.makedirs(out, exist_ok=True)
    snippets = snippet_fixtures()
    rows = template_fixtures()
    for name, data in (("snippets.json", snippets), ("templates.json", rows), ("generation-qwen2.json", generation_token_fixture())):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
    saved_qwen2_fixture(out)
    cases = sum(len(row["cases"]) for row in rows)
    print(f"{len(snippets)} snippets, {len(rows)} templates x {cases} cases written to {out} "
          f"(transformers {transformers.__version__}, jinja2 {jinja2.__version__})")


if __name__ == "__main__":
    main()
