// Renders each case read from stdin with handlebars.js and prints the outputs as a JSON array.
// A case is {"template", "data" (JSON text, parsed here as JavaScript parses it), "partials"}.
import Handlebars from "handlebars";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = JSON.parse(input).map(({ template, data, partials }) => {
  const hb = Handlebars.create();
  for (const [name, body] of Object.entries(partials ?? {})) hb.registerPartial(name, body);
  return hb.compile(template, { preventIndent: true })(JSON.parse(data));
});
process.stdout.write(JSON.stringify(out));
