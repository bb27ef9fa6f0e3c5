"""Builds include/clinasr/data/lexicon.json from the curated lists below (run once per lexicon version).

The drug list is a hand-curated set of commonly prescribed generics with common brand names, the
kind of terms clinicians dictate every day; it is the project's own (no third-party list copied).
"""
import json
from pathlib import Path

DRUGS = """
acetaminophen:Tylenol|acyclovir:Zovirax|adalimumab:Humira|albuterol:Ventolin,ProAir|alendronate:Fosamax
allopurinol:Zyloprim|alprazolam:Xanax|amiodarone:Pacerone|amitriptyline:Elavil|amlodipine:Norvasc
amoxicillin:Amoxil|amoxicillin clavulanate:Augmentin|ampicillin|anastrozole:Arimidex|apixaban:Eliquis
aripiprazole:Abilify|aspirin|atenolol:Tenormin|atorvastatin:Lipitor|azathioprine:Imuran|azithromycin:Zithromax
baclofen|beclomethasone:Qvar|benazepril:Lotensin|benztropine:Cogentin|bisoprolol|budesonide:Pulmicort
bumetanide:Bumex|buprenorphine:Subutex|bupropion:Wellbutrin|buspirone:Buspar|calcitriol|canagliflozin:Invokana
captopril|carbamazepine:Tegretol|carbidopa levodopa:Sinemet|carvedilol:Coreg|cefazolin:Ancef|cefdinir
cefepime:Maxipime|ceftriaxone:Rocephin|cefuroxime:Ceftin|celecoxib:Celebrex|cephalexin:Keflex|cetirizine:Zyrtec
chlorthalidone|ciprofloxacin:Cipro|citalopram:Celexa|clarithromycin:Biaxin|clindamycin:Cleocin|clonazepam:Klonopin
clonidine:Catapres|clopidogrel:Plavix|clozapine:Clozaril|colchicine:Colcrys|cyclobenzaprine:Flexeril
dabigatran:Pradaxa|dapagliflozin:Farxiga|denosumab:Prolia|dexamethasone:Decadron|dexmedetomidine:Precedex
diazepam:Valium|diclofenac:Voltaren|digoxin:Lanoxin|diltiazem:Cardizem|diphenhydramine:Benadryl|divalproex:Depakote
dobutamine|docusate:Colace|donepezil:Aricept|doxazosin:Cardura|doxycycline:Vibramycin|duloxetine:Cymbalta
dulaglutide:Trulicity|empagliflozin:Jardiance|enalapril:Vasotec|enoxaparin:Lovenox|epinephrine:EpiPen
ertapenem:Invanz|erythromycin|escitalopram:Lexapro|esomeprazole:Nexium|estradiol|ezetimibe:Zetia|famotidine:Pepcid
fenofibrate:Tricor|fentanyl:Duragesic|ferrous sulfate|fexofenadine:Allegra|finasteride:Proscar|fluconazole:Diflucan
fludrocortisone|fluoxetine:Prozac|fluticasone:Flonase|fluticasone salmeterol:Advair|folic acid|fondaparinux:Arixtra
furosemide:Lasix|gabapentin:Neurontin|gentamicin|glimepiride:Amaryl|glipizide:Glucotrol|glyburide
haloperidol:Haldol|heparin|hydralazine|hydrochlorothiazide|hydrocodone:Norco|hydrocortisone|hydromorphone:Dilaudid
hydroxychloroquine:Plaquenil|hydroxyzine:Atarax|ibuprofen:Advil,Motrin|indomethacin:Indocin|insulin aspart:NovoLog
insulin glargine:Lantus|insulin lispro:Humalog|ipratropium:Atrovent|irbesartan:Avapro|isoniazid|isosorbide mononitrate:Imdur
ivermectin|ketamine|ketorolac:Toradol|labetalol|lacosamide:Vimpat|lactulose|lamotrigine:Lamictal|lansoprazole:Prevacid
letrozole:Femara|levetiracetam:Keppra|levofloxacin:Levaquin|levothyroxine:Synthroid|lidocaine|linagliptin:Tradjenta
linezolid:Zyvox|liraglutide:Victoza|lisinopril:Prinivil,Zestril|lithium|loperamide:Imodium|loratadine:Claritin
lorazepam:Ativan|losartan:Cozaar|lovastatin|magnesium sulfate|meclizine:Antivert|medroxyprogesterone:Depo-Provera
meloxicam:Mobic|memantine:Namenda|meropenem:Merrem|mesalamine:Lialda|metformin:Glucophage|methadone
methimazole:Tapazole|methocarbamol:Robaxin|methotrexate|methylphenidate:Ritalin|methylprednisolone:Solu-Medrol
metoclopramide:Reglan|metolazone|metoprolol succinate:Toprol|metoprolol tartrate:Lopressor|metronidazole:Flagyl
midazolam:Versed|minocycline|mirtazapine:Remeron|montelukast:Singulair|morphine|mupirocin:Bactroban|mycophenolate:CellCept
naloxone:Narcan|naltrexone|naproxen:Aleve|nebivolol:Bystolic|nifedipine:Procardia|nitrofurantoin:Macrobid
nitroglycerin:Nitrostat|norepinephrine:Levophed|nortriptyline:Pamelor|nystatin|olanzapine:Zyprexa|olmesartan:Benicar
omeprazole:Prilosec|ondansetron:Zofran|oseltamivir:Tamiflu|oxcarbazepine:Trileptal|oxybutynin:Ditropan|oxycodone:OxyContin
pantoprazole:Protonix|paroxetine:Paxil|penicillin|phenobarbital|phenytoin:Dilantin|pioglitazone:Actos
piperacillin tazobactam:Zosyn|potassium chloride:Klor-Con|pravastatin:Pravachol|prednisolone|prednisone:Deltasone
pregabalin:Lyrica|primidone|prochlorperazine:Compazine|promethazine:Phenergan|propofol:Diprivan|propranolol:Inderal
quetiapine:Seroquel|ramipril:Altace|ranolazine:Ranexa|rifampin|risperidone:Risperdal|rivaroxaban:Xarelto
rosuvastatin:Crestor|sacubitril valsartan:Entresto|semaglutide:Ozempic,Wegovy|senna|sertraline:Zoloft
sildenafil:Viagra|simvastatin:Zocor|sitagliptin:Januvia|sodium bicarbonate|spironolactone:Aldactone|sucralfate:Carafate
sulfamethoxazole trimethoprim:Bactrim|sumatriptan:Imitrex|tacrolimus:Prograf|tamoxifen|tamsulosin:Flomax
temazepam:Restoril|terazosin|terbinafine:Lamisil|testosterone|thiamine|ticagrelor:Brilinta|timolol
tiotropium:Spiriva|tizanidine:Zanaflex|topiramate:Topamax|torsemide:Demadex|tramadol:Ultram|trazodone:Desyrel
triamcinolone:Kenalog|valacyclovir:Valtrex|valproic acid|valsartan:Diovan|vancomycin:Vancocin|varenicline:Chantix
venlafaxine:Effexor|verapamil:Calan|vitamin d|warfarin:Coumadin|zolpidem:Ambien|ziprasidone:Geodon|zonisamide
"""

lexicon = {
    "version_note": "bump when lists change; the lexicon version recorded in manifests is the file's sha256",
    "drugs": [],
    "units": {"milligrams": ["mg"], "micrograms": ["mcg"], "grams": ["g"], "units": ["units"], "milliliters": ["mL"],
              "puffs": ["puffs"], "tablets": ["tabs"], "milliequivalents": ["mEq"]},
    "routes": ["by mouth", "orally", "intravenously", "i v", "subcutaneously", "intramuscularly", "inhaled",
               "topically", "sublingually", "per rectum", "via nebulizer", "through the g tube"],
    "frequencies": ["once daily", "twice daily", "three times daily", "four times daily", "every four hours",
                    "every six hours", "every eight hours", "every twelve hours", "at bedtime", "as needed",
                    "every morning", "once weekly", "with meals", "as needed for pain"],
    "negations": ["no", "denies", "not on", "stopped", "never took", "no longer taking", "discontinued",
                  "is not taking", "has not been on", "no history of", "negative for", "allergic to"],
    "fillers": ["um", "uh", "so", "okay", "you know", "let's see", "alright", "hmm"],
    "shorthand": {"b i d": "twice daily", "t i d": "three times daily", "q h s": "at bedtime",
                  "p r n": "as needed", "n p o": "nothing by mouth", "h x": "history", "s o b": "shortness of breath"},
    "code_switching": ["el paciente", "por favor", "dolor", "gracias", "la medicina", "mañana", "todos los días"],
    "conditions": ["atrial fibrillation", "hypertension", "type two diabetes", "heart failure", "pneumonia",
                   "cellulitis", "seizures", "hypothyroidism", "depression", "asthma", "c o p d", "chronic kidney disease",
                   "deep vein thrombosis", "urinary tract infection", "migraine", "gout", "anxiety", "chest pain"],
    "dose_amounts": [0.5, 1, 2, 2.5, 5, 10, 12.5, 20, 25, 40, 50, 75, 81, 100, 125, 150, 200, 250, 300, 400, 500,
                     600, 750, 800, 1000],
}
for entry in DRUGS.replace("\n", "|").split("|"):
    entry = entry.strip()
    if not entry:
        continue
    name, _, brands = entry.partition(":")
    lexicon["drugs"].append({"name": name.strip(), "brands": [b.strip() for b in brands.split(",") if b.strip()]})
out = Path(__file__).resolve().parents[1] / "include/clinasr/data/lexicon.json"
out.write_text(json.dumps(lexicon, indent=1, ensure_ascii=False) + "\n")
print(f"{len(lexicon['drugs'])} drugs -> {out}")
